"""`synth`: music21's bundled corpus rendered with FluidSynth, captioned from its metadata.

The TFDS builder lives in `musiclm_jax.data.synth.builder` (it imports TensorFlow); the modules
here are TF-free. See docs/SYNTH.md.
"""

from musiclm_jax.data.synth.instruments import HELDOUT_INSTRUMENT_COMBINATIONS
from musiclm_jax.data.synth.plan import SPLITS, work_split

__all__ = ['HELDOUT_INSTRUMENT_COMBINATIONS', 'SPLITS', 'work_split']
