"""Which frozen VAE supplies the latents the generator trains on: one decision, read by
encode_latents (which caches them) and train_generator (which trains on them)."""

from __future__ import annotations

from pathlib import Path

from recaption import latents, paths
from recaption.models import autoencoder as ae_lib
from recaption.params import Params


def latent_source(params: Params) -> tuple[Path, str, int] | None:
    """The frozen VAE whose latents the generator trains on, as (its folder, its identity,
    the image size): the VAE of the saved pipeline `generator.model` (a Stable Diffusion
    folder), else the trained autoencoder; None in pixel space."""
    saved = latents.pipeline_vae(params.generator.model)
    if saved is not None or not ae_lib.is_trained(paths.AUTOENCODER):
        return saved
    return paths.AUTOENCODER, ae_lib.fingerprint(paths.AUTOENCODER), params.data.image_size


def cached_identity(params: Params) -> str | None:
    """The identity of the VAE whose latents data/latents holds for the generator, or None:
    pixel space, or encode_latents has not cached this VAE's latents (a saved pipeline's
    VAE then encodes each batch as it comes)."""
    source = latent_source(params)
    if source is None:
        return None
    folder, identity, _ = source
    if folder == paths.AUTOENCODER:  # built in: encode_latents always runs before
        return identity
    if latents.stored_fingerprint(paths.LATENTS) == latents.cache_fingerprint(identity):
        return identity
    return None
