"""MusicLM's three token stages: one decoder-only LM, three token layouts.

  semantic: MuLan tokens (+ melody)            -> w2v-BERT semantic tokens
  coarse:   MuLan + semantic tokens            -> SoundStream RVQ levels 1-4
  fine:     SoundStream levels 1-4             -> levels 5-12
"""

from musiclm_jax.stages.layouts import BOS_ID
from musiclm_jax.stages.layouts import coarse_layout
from musiclm_jax.stages.layouts import fine_layout
from musiclm_jax.stages.layouts import PAD_ID
from musiclm_jax.stages.layouts import semantic_layout
from musiclm_jax.stages.layouts import SEP_ID
from musiclm_jax.stages.layouts import StageLayout
from musiclm_jax.stages.layouts import TokenField
from musiclm_jax.stages.lm import CACHE_AXES
from musiclm_jax.stages.lm import count_params
from musiclm_jax.stages.lm import DecoderLM
from musiclm_jax.stages.lm import init_cache
from musiclm_jax.stages.lm import LMConfig
from musiclm_jax.stages.lm import REMAT_POLICIES
from musiclm_jax.stages.model import StageModel

__all__ = [
    'BOS_ID', 'CACHE_AXES', 'DecoderLM', 'LMConfig', 'PAD_ID', 'REMAT_POLICIES', 'SEP_ID',
    'StageLayout', 'StageModel', 'TokenField', 'coarse_layout', 'count_params', 'fine_layout',
    'init_cache', 'semantic_layout',
]
