"""tunemv.tinyif: the project's own tiny pixel-space text-to-image backbone (an IF stage-I stand-in): its
model, tokenizer, recipe, training loop and model-card figures (``tunemv foundation train-backbone``)."""
