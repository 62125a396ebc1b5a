"""Sampling: bundles, compiled batched decoding, long-form windows, story mode, the gallery.

  bundle     `load_bundle` (what `musiclm_jax.export` writes)
  decode     one stage window: prefill + `lax.fori_loop` with a KV cache, CFG, top-k/top-p
  longform   sliding windows with fixed window and cache sizes (up to 5 minutes)
  story      timed text segments ("calm (0:00-0:15), upbeat (0:15-0:30)")
  pipeline   text -> MuLan tokens -> semantic -> coarse -> fine -> codec -> waveform
  gallery    wav / png / manifest.json / index.html writing
  quality    MCC and instrument adherence of generated vs real vs shuffled (docs/RESULTS.md)

The CLI is `python -m musiclm_jax.sample` (`musiclm sample`). Nothing here imports gin or
TensorFlow. Submodules are imported explicitly (this package imports none of them).
"""
