"""The `synth` corpus: builds the `tiny` config end to end and checks what it promises.

One module-scoped build (8 clips of 4 works, ~20 s) serves the end-to-end checks; the rest
re-plans the same works without rendering.
"""

import dataclasses
import fcntl
import json
import os
import re
import shutil

import numpy as np
import pytest

from musiclm_jax.data.synth import excerpts, instruments, pipeline, plan, render, scores

pytestmark = pytest.mark.skipif(
    shutil.which('fluidsynth') is None, reason='needs Debian fluidsynth + fluid-soundfont-gm')

TINY_FILES = ('bach/bwv1.6.mxl', 'bach/bwv102.7.mxl', 'ryansMammoth/7thRegimentReel.abc',
              'ryansMammoth/AfterTheHareReel.abc')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """(builder, {split: [example]}) of the tiny config, built once per test run.

  Under pytest-xdist the workers share one build: the first takes a lock and builds, the
  others wait and then reuse the prepared data.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from musiclm_jax.data.synth.builder import Synth  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # shared by the workers of this run only
  data_dir = base / 'synth_tiny'
  data_dir.mkdir(exist_ok=True)
  with open(base / 'synth_tiny.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = Synth(config='tiny', data_dir=str(data_dir), num_workers=2)
    builder.download_and_prepare()
  loaded = {split: list(tfds.as_numpy(builder.as_dataset(split=split)))
            for split in builder.info.splits}
  return builder, loaded


@pytest.fixture(scope='module')
def planned():
  """Render plans of the tiny works, as the builder makes them."""
  from musiclm_jax.data.synth.builder import TINY  # pylint: disable=g-import-not-at-top
  options = pipeline.Options(max_excerpts_per_work=TINY.max_excerpts_per_work,
                             renders_per_excerpt=TINY.renders_per_excerpt, seed=TINY.seed,
                             heldout_rate=TINY.heldout_rate, soundfont=render.default_soundfont())
  items = []
  for rel_path in TINY_FILES:
    items += pipeline.plan_file(rel_path, options)[0]
  return options, items


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _all(loaded):
  return [ex for examples in loaded.values() for ex in examples]


def test_tiny_build_audio_and_report(built):
  builder, loaded = built
  assert set(loaded) == {'train', 'validation', 'test', 'test_heldout_instruments'}
  assert builder.info.features['audio'].sample_rate == 24000
  assert builder.summary['clips'] == 8 and builder.summary['splits']['train'] == 4
  assert builder.summary['audio_hours'] == pytest.approx(8 * 10 / 3600, abs=1e-3)
  report = builder.data_dir_root / 'synth' / 'skipped.jsonl'
  assert report.exists() and len(report.read_text().splitlines()) == len(builder.skipped) == 0
  for ex in _all(loaded):
    for field in ('audio', 'hum', 'whistle'):
      wav = ex[field]
      assert wav.dtype == np.int16 and wav.shape == (240000,), field  # mono, 10 s at 24 kHz
      x = wav.astype(np.float32) / 32768
      assert np.isfinite(x).all() and np.abs(x).max() > 0.2, field
      assert np.sqrt(np.mean(x ** 2)) > 0.01, field  # not silent
    assert ex['pitch_classes'].shape == (250, 12) and ex['pitch_classes'].dtype == np.uint8
    assert ex['pitch_classes'].max() == 1 and ex['pitch_classes'].sum(1).mean() >= 1
    assert ex['melody_pitch'].shape == (250,) and (ex['melody_pitch'] > 0).mean() > 0.5
    assert 40 <= ex['tempo_bpm'] <= 200
    assert re.fullmatch(r'[A-G][b#]? (major|minor)', _text(ex['key']))


def test_captions_name_exactly_the_rendered_instruments(built, planned):
  _, loaded = built
  options, items = planned
  by_id = {p.render_id: (e, p) for e, p in items}
  for ex in _all(loaded):
    caption = _text(ex['caption']).lower()
    names = [_text(n) for n in ex['instruments']]
    programs = ex['programs'].tolist()
    assert programs == [instruments.NAME_TO_PROGRAM[n] for n in names]
    rest = caption
    for name in sorted(names, key=len, reverse=True):
      assert name in rest, (name, caption)
      rest = rest.replace(name, ' ')
    for other in instruments.NAME_TO_PROGRAM:  # nothing that was not rendered
      assert not re.search(rf'\b{re.escape(other)}s?\b', rest), (other, caption)
    assert set(names) <= {_text(a) for a in ex['aspects']}
    # The MIDI file that was rendered holds exactly these programs (and the kit on channel 10).
    excerpt, render_plan = by_id[_text(ex['render_id'])]
    assert render_plan.caption == _text(ex['caption'])
    midi = render.build_midi([(excerpt, render_plan)], clip_seconds=options.clip_seconds)
    messages = [m for track in midi.tracks for m in track]
    used = {m.program for m in messages if m.type == 'program_change'}
    drums = any(m.type == 'note_on' and m.channel == 9 for m in messages)
    assert used == set(programs) - {instruments.DRUMS}
    assert drums == (instruments.DRUMS in programs)


def test_melody_groups_share_the_excerpt(built):
  _, loaded = built
  groups = {}
  for ex in _all(loaded):
    groups.setdefault(_text(ex['melody_group']), []).append(ex)
  assert len(groups) == 4 and all(len(g) == 2 for g in groups.values())
  for group in groups.values():
    first, second = group
    assert first['render_id'] != second['render_id']
    for field in ('work_id', 'excerpt_start', 'excerpt_end', 'tempo_bpm', 'transposition', 'key'):
      assert first[field] == second[field], field
    # Tempo and transposition belong to the group: the score frames agree exactly.
    np.testing.assert_array_equal(first['pitch_classes'], second['pitch_classes'])
    np.testing.assert_array_equal(first['melody_pitch'], second['melody_pitch'])


def test_splits_are_disjoint_by_work(built):
  _, loaded = built
  works = {split: {_text(ex['work_id']) for ex in examples} for split, examples in loaded.items()}
  held_out = works['validation'] | works['test'] | works['test_heldout_instruments']
  assert not works['train'] & held_out
  assert not works['validation'] & works['test']
  for split, ids in works.items():
    for work_id in ids:
      expected = {'validation', 'test'} if split == plan.HELDOUT_SPLIT else {split}
      assert plan.work_split(work_id) in expected


def test_heldout_combinations_never_in_train(built, planned):
  _, loaded = built
  for ex in loaded['train'] + loaded['validation'] + loaded['test']:
    assert not instruments.heldout_combinations_in(_text(n) for n in ex['instruments'])
  for ex in loaded['test_heldout_instruments']:
    assert instruments.heldout_combinations_in(_text(n) for n in ex['instruments'])
  # Many plans of the same excerpts under other work ids: train never draws a held-out pair.
  _, items = planned
  excerpt_list = list({e.melody_group: e for e, _ in items}.values())
  counts = {'train': 0, plan.HELDOUT_SPLIT: 0}
  for i in range(60):
    for excerpt in excerpt_list:
      fake = dataclasses.replace(excerpt, work_id=f'fake/{i}', melody_group=f'fake/{i}#x0')
      for p in plan.plan_renders(fake, renders=3, seed=1, heldout_rate=0.25):
        heard = p.part_names + (['drums'] if p.drums else [])
        held = instruments.heldout_combinations_in(heard)
        assert (p.split == plan.HELDOUT_SPLIT) == bool(held)
        if p.split in counts:
          counts[p.split] += 1
  assert counts['train'] > 300 and counts[plan.HELDOUT_SPLIT] > 10


def test_same_seed_same_plans_and_audio(built, planned):
  _, loaded = built
  options, items = planned
  again = []
  for rel_path in TINY_FILES:
    again += pipeline.plan_file(rel_path, options)[0]
  assert [(p.render_id, p.caption, p.instruments, p.aspects) for _, p in items] == \
         [(p.render_id, p.caption, p.instruments, p.aspects) for _, p in again]
  captions = {_text(ex['render_id']): _text(ex['caption']) for ex in _all(loaded)}
  assert captions == {p.render_id: p.caption for _, p in items}
  other_seed = pipeline.plan_file(TINY_FILES[0], dataclasses.replace(options, seed=5))[0]
  assert [p.caption for _, p in other_seed] != [p.caption for _, p in items[:len(other_seed)]]
  # A clip renders the same alone or at another position of a batch.
  alone, _ = pipeline.render_batch(items[1:2], options)
  batch = {_text(ex['render_id']): ex for ex in _all(loaded)}
  ref = batch[alone[0][0]]['audio'].astype(np.float64)
  err = np.linalg.norm(alone[0][1]['audio'] - ref) / np.linalg.norm(ref)
  assert err < 0.02
  np.testing.assert_array_equal(alone[0][1]['hum'], batch[alone[0][0]]['hum'])


def test_bad_items_are_skipped_not_fatal(planned, tmp_path):
  options, items = planned
  items_none, skipped = pipeline.plan_file('bach/no_such_chorale.mxl', options)
  assert items_none == [] and skipped[0]['reason'].startswith('unparsable: ')
  bad_font = tmp_path / 'bad.sf2'
  bad_font.write_bytes(b'not a soundfont')
  examples, skipped = pipeline.render_batch(items[:2], dataclasses.replace(
      options, soundfont=str(bad_font)))
  assert examples == [] and len(skipped) == 2
  assert all(s['reason'].startswith(('render failed', 'bad audio')) for s in skipped)
  json.dumps(skipped)


def test_score_helpers():
  # Key finding: a C major scale, an A harmonic minor scale.
  major = [60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60]
  assert excerpts.estimate_key(major, np.ones(len(major)), None) == (0, 'major')
  minor = [57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 57]
  assert excerpts.estimate_key(minor, np.ones(len(minor)), (0, None)) == (9, 'minor')
  assert excerpts.key_name(9 + 3, 'minor') == 'C minor'
  # Skyline of a part with a chord and a held note under a moving line.
  part = excerpts.ExcerptPart(name='', starts=np.array([0.0, 0.0, 1.0, 1.5]),
                              ends=np.array([1.0, 1.0, 3.0, 2.0]),
                              pitches=np.array([60, 64, 55, 67], dtype=np.int16))
  assert excerpts.top_line(part) == [(0.0, 1.0, 64), (1.0, 1.5, 55), (1.5, 2.0, 67)]
  assert excerpts.beat_quarters(6, 8) == 1.5 and excerpts.beat_quarters(4, 2) == 2.0
  assert instruments.name_from_part_name('Violoncello') == 'cello'
  assert instruments.name_from_part_name('Violin II') == 'violin'
  assert instruments.name_from_part_name('Alto') == 'choir'
  assert plan.work_split('bach/bwv1.6.mxl') == 'train'  # the split rule must never drift
  assert plan.work_split('bach/bwv102.7.mxl') == 'test'
  assert plan.work_split('ryansMammoth/AfterTheHareReel.abc') == 'validation'
  assert scores.stable_hash('a', 1) == scores.stable_hash('a', 1) != scores.stable_hash('a', 2)
