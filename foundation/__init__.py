"""tunemv.foundation: the project's own tiny pixel-space text-to-image backbone (an IF stage-I stand-in) and attribute classifier."""
