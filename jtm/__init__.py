"""Jaka to Melodia: contrastive predictive coding on raw music audio."""
