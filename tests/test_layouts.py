"""Token layouts of the three stages: flattening, offsets, sequences, loss masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.stages import layouts


def _tiny():
  return {
      'semantic': layouts.semantic_layout(mulan_codebook_size=8, semantic_codebook_size=16,
                                          semantic_frames=10),
      'coarse': layouts.coarse_layout(mulan_codebook_size=8, semantic_codebook_size=16,
                                      semantic_frames=5, codec_codebook_size=32,
                                      acoustic_frames=10),
      'fine': layouts.fine_layout(codec_codebook_size=32, acoustic_frames=6),
  }


def _fields(layout, rng, batch=3):
  out = {}
  for f in layout.fields:
    out[f.name] = rng.integers(0, f.codebook_size, (batch, f.num_frames, f.num_levels))
  return out


def test_paper_vocab_and_lengths():
  sem, coarse, fine = (layouts.semantic_layout(), layouts.coarse_layout(),
                       layouts.fine_layout())
  assert sem.vocab_size == 3 + 12 * 1024 + 1024
  assert coarse.vocab_size == 3 + 12 * 1024 + 1024 + 4 * 1024
  assert fine.vocab_size == 3 + 4 * 1024 + 8 * 1024
  assert sem.sequence_length == 1 + 12 + 1 + 750
  assert coarse.sequence_length == 1 + 12 + 250 + 1 + 500 * 4
  assert fine.sequence_length == 1 + 150 * 4 + 1 + 150 * 8
  assert fine.target.first_level == 4


@pytest.mark.parametrize('stage', ['semantic', 'coarse', 'fine'])
def test_flatten_round_trip_and_level_offsets(stage):
  layout = _tiny()[stage]
  rng = np.random.default_rng(0)
  fields = _fields(layout, rng)
  for f in layout.fields:
    ids = layout.flatten(f.name, fields[f.name])
    assert ids.shape == (3, f.length) and ids.dtype == np.int32
    # Frame-major: position t * levels + l holds level l of frame t, in level l's slice.
    for level in range(f.num_levels):
      lo, hi = layout.level_range(f.name, level)
      level_ids = ids[:, level::f.num_levels]
      assert ((level_ids >= lo) & (level_ids < hi)).all()
      np.testing.assert_array_equal(level_ids - lo, fields[f.name][:, :, level])
    np.testing.assert_array_equal(layout.unflatten(f.name, ids), fields[f.name])
  # Field slices tile the vocabulary after the special tokens, without overlap.
  ranges = sorted(layout.level_range(f.name, l) for f in layout.fields
                  for l in range(f.num_levels))
  assert ranges[0][0] == layouts.NUM_SPECIAL_TOKENS
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  assert ranges[-1][1] == layout.vocab_size


@pytest.mark.parametrize('stage', ['semantic', 'coarse', 'fine'])
def test_build_and_loss_mask(stage):
  layout = _tiny()[stage]
  fields = _fields(layout, np.random.default_rng(1))
  batch = layout.build(fields)
  seq = layout.sequence(fields)
  assert seq.shape == (3, layout.sequence_length)
  assert (seq[:, 0] == layouts.BOS_ID).all()
  assert (seq[:, layout.prefix_length - 1] == layouts.SEP_ID).all()
  np.testing.assert_array_equal(seq[:, :layout.prefix_length], layout.prefix(fields))
  for k in ('inputs', 'targets', 'loss_mask'):
    assert batch[k].shape == (3, layout.model_length)
  assert batch['loss_mask'].dtype == np.float32
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  mask = batch['loss_mask']
  # Exactly the target tokens are predicted: never BOS/SEP/conditioning.
  assert (mask.sum(1) == layout.target.length).all()
  assert (mask[:, :layout.prefix_length - 1] == 0).all()
  masked_targets = batch['targets'][mask > 0]
  lo = layout.offset(layout.target.name)
  assert ((masked_targets >= lo) & (masked_targets < lo + layout.target.vocab_size)).all()
  levels = layout.target_levels(batch['targets'])
  assert ((levels >= 0) == (mask > 0)).all()
  # The i-th target token is in target_range(i).
  targets = batch['targets'][:, layout.prefix_length - 1:]
  for i in range(layout.target.length):
    lo, hi = layout.target_range(i)
    assert ((targets[:, i] >= lo) & (targets[:, i] < hi)).all()
  split = layout.split(seq)
  for f in layout.fields:
    np.testing.assert_array_equal(split[f.name], fields[f.name])


def test_missing_frames_are_pad_and_unmasked():
  layout = _tiny()['coarse']
  fields = _fields(layout, np.random.default_rng(2))
  fields['coarse'] = fields['coarse'][:, :7]  # 3 of 10 frames missing
  fields['coarse'][0, 2, 1] = -1  # one missing code
  batch = layout.build(fields)
  mask = batch['loss_mask']
  assert mask[1].sum() == 7 * 4 and mask[0].sum() == 7 * 4 - 1
  assert (batch['targets'][mask == 0][-3 * 4:] == layouts.PAD_ID).all()
  codes = layout.unflatten('coarse', layout.flatten('coarse', fields['coarse']))
  assert (codes[:, 7:] == -1).all() and codes[0, 2, 1] == -1


def test_two_dimensional_inputs():
  layout = _tiny()['semantic']
  rng = np.random.default_rng(3)
  mulan = rng.integers(0, 8, (2, 12))
  semantic = rng.integers(0, 16, (2, 10))
  a = layout.build({'mulan': mulan, 'semantic': semantic})
  b = layout.build({'mulan': mulan[:, None, :], 'semantic': semantic[:, :, None]})
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_jax_arrays_under_jit_match_numpy():
  layout = _tiny()['fine']
  fields = _fields(layout, np.random.default_rng(4))
  want = layout.build(fields)
  got = jax.jit(layout.build)({k: jnp.asarray(v) for k, v in fields.items()})
  for k in want:
    assert isinstance(got[k], jax.Array)
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def test_bad_inputs_name_the_field():
  layout = _tiny()['coarse']
  fields = _fields(layout, np.random.default_rng(5))
  with pytest.raises(ValueError, match="'coarse'.*codebook"):
    layout.build({**fields, 'coarse': fields['coarse'] + 32})
  with pytest.raises(ValueError, match="'coarse'"):
    layout.build({**fields, 'coarse': fields['coarse'][..., :3]})
  with pytest.raises(ValueError, match="'semantic'"):
    layout.build({**fields, 'semantic': np.zeros((3, 6), np.int32)})
  with pytest.raises(KeyError, match="'mulan'"):
    layout.build({'semantic': fields['semantic'], 'coarse': fields['coarse']})
  with pytest.raises(ValueError, match='repeat'):
    layouts.StageLayout((layouts.TokenField('a', 4),), layouts.TokenField('a', 4))


def test_melody_prefix():
  layout = layouts.semantic_layout(mulan_codebook_size=8, semantic_codebook_size=16,
                                   semantic_frames=4, melody_codebook_size=8,
                                   melody_levels=2, melody_frames=3)
  assert [f.name for f in layout.conditioning] == ['mulan', 'melody']
  assert layout.prefix_length == 2 + 12 + 6
  fields = _fields(layout, np.random.default_rng(6))
  batch = layout.build(fields)
  assert (batch['loss_mask'].sum(1) == 4).all()
