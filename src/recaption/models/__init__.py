"""Model code: CLIP, captioner, generator. Library only: no DVC, no params.yaml."""
