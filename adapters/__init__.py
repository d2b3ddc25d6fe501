"""tunemv.adapters: frozen backbones, control branches, cross-view attention (arrives with issue 4)."""
