"""musiclm_jax: a JAX/Flax implementation of MusicLM that scales from a laptop to TPU pods.

The library imports without TensorFlow; TF, seqio and TFDS are used only in
`musiclm_jax.data` and `tasks/`.
"""

__version__ = "0.1.0"
