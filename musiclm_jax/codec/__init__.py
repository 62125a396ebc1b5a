"""SoundStream codec: causal SEANet encoder/decoder, residual VQ, discriminators, GAN losses."""

from musiclm_jax.codec.discriminators import DiscriminatorConfig
from musiclm_jax.codec.losses import LossConfig
from musiclm_jax.codec.model import SoundStreamCodec, SoundStreamConfig, SoundStreamModel
from musiclm_jax.codec.seanet import SEANetConfig

__all__ = ['DiscriminatorConfig', 'LossConfig', 'SEANetConfig', 'SoundStreamCodec',
           'SoundStreamConfig', 'SoundStreamModel']
