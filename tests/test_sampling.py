"""Sampling: compiled decode vs a naive loop, guidance, sharding, windows, the sample CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from musiclm_jax import sample
from musiclm_jax.sampling import bundle as bundle_lib
from musiclm_jax.sampling import decode
from musiclm_jax.sampling import longform
from musiclm_jax.sampling import pipeline as pipeline_lib
from musiclm_jax.sampling import random_bundle

ONE_DEVICE = jax.devices()[:1]


@pytest.fixture(scope='module')
def bundle_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('b') / 'bundle')
  random_bundle.write(path)
  return path


@pytest.fixture(scope='module')
def bundle(bundle_path):
  return bundle_lib.load_bundle(bundle_path)


def _coarse_inputs(bundle, batch=2, seed=0):
  layout = bundle.stages['coarse'].layout
  rng = np.random.default_rng(seed)
  fields = {'mulan': rng.integers(0, 16, (batch, 12)),
            'semantic': rng.integers(0, 16, (batch, layout.field('semantic').num_frames)),
            'coarse': rng.integers(0, 16, (batch, 2, 4))}  # 2 known frames = a window prefix
  keys = np.stack([np.asarray(jax.random.PRNGKey(i)) for i in range(batch)])
  return layout, layout.sequence(fields), keys


def _naive_greedy(stage, params, tokens, prompt_len, num_new):
  """A full forward pass (no cache) per token, argmax inside the position's level range."""
  tokens = np.array(tokens)
  forward = jax.jit(stage.apply)  # causal: positions after `pos` do not change its logits
  for pos in range(prompt_len, prompt_len + num_new):
    logits = np.asarray(forward(params, jnp.asarray(tokens)))[:, pos - 1]
    lo, hi = stage.layout.target_range(pos - stage.layout.prefix_length)
    tokens[:, pos] = lo + np.argmax(logits[:, lo:hi], axis=-1)
  return tokens


def test_greedy_decode_equals_naive_loop(bundle):
  layout, tokens, keys = _coarse_inputs(bundle)
  stage, params = bundle.stages['coarse'], bundle.stage_params['coarse']
  dec = decode.StageDecoder(stage, params, settings=decode.SamplingSettings(temperature=0.0),
                            devices=ONE_DEVICE)
  prompt_len = layout.prefix_length + 2 * 4
  num_new = layout.target.length - 2 * 4
  out = dec.generate(tokens, prompt_len, num_new, keys)
  np.testing.assert_array_equal(out, _naive_greedy(stage, params, tokens, prompt_len, num_new))
  codes = layout.split(out)['coarse']
  assert codes.min() >= 0 and codes.max() < 16  # every token inside its level's range
  # Fewer tokens: the same program (traced scalars), the same first tokens, the rest untouched.
  traces = decode.TRACE_COUNTS['coarse']
  short = dec.generate(tokens, prompt_len, 5, keys)
  assert decode.TRACE_COUNTS['coarse'] == traces
  np.testing.assert_array_equal(short[:, :prompt_len + 5], out[:, :prompt_len + 5])
  np.testing.assert_array_equal(short[:, prompt_len + 5:], tokens[:, prompt_len + 5:])


def test_guidance_and_sharding(bundle):
  layout, tokens, keys = _coarse_inputs(bundle, seed=1)
  stage, params = bundle.stages['coarse'], bundle.stage_params['coarse']
  prompt_len, num_new = layout.prefix_length, layout.target.length

  def run(settings, toks=tokens, devices=ONE_DEVICE):
    return decode.StageDecoder(stage, params, settings=settings, devices=devices).generate(
        toks, prompt_len, num_new, keys)

  # cfg_scale 0 is the unconditional model: MuLan tokens replaced by PAD.
  uncond = np.where(decode.conditioning_mask(layout)[None], 0, tokens)
  greedy = decode.SamplingSettings(temperature=0.0)
  guided0 = run(decode.SamplingSettings(temperature=0.0, cfg_scale=0.0))
  plain_uncond = run(greedy, uncond)
  np.testing.assert_array_equal(guided0[:, prompt_len:], plain_uncond[:, prompt_len:])
  # Sampling with guidance: batch sharded over 2 devices == one device.
  settings = decode.SamplingSettings(temperature=1.0, top_k=8, top_p=0.9, cfg_scale=3.0)
  np.testing.assert_array_equal(run(settings), run(settings, devices=jax.devices()[:2]))


def test_filter_logits():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(decode.filter_logits(logits, top_k=2))) & (
      np.asarray(decode.filter_logits(logits, top_k=2)) > -1e30)
  assert kept.tolist() == [[True, True, False, False]]
  top_p = np.asarray(decode.filter_logits(logits, top_p=0.7)) > -1e30
  assert top_p.tolist() == [[True, True, False, False]]
  top_p = np.asarray(decode.filter_logits(logits, top_p=0.4)) > -1e30
  assert top_p.tolist() == [[True, False, False, False]]


def test_window_plan():
  windows = longform.plan_windows(38, 8, 4)
  assert len(windows) == longform.count_windows(38, 8, 4) == 9
  assert (windows[0].start, windows[0].prompt_frames, windows[0].new_frames) == (0, 0, 8)
  for prev, w in zip(windows, windows[1:]):
    assert w.new_start == prev.end  # generated spans tile the stream
    assert w.prompt_frames == 4 and w.start == prev.end - 4  # overlap = the kept prefix
    assert w.prompt_frames + w.new_frames <= 8
  assert windows[-1].end == 38 and windows[-1].new_frames == 2
  assert longform.plan_windows(5, 8, 4) == [longform.Window(0, 0, 0, 5)]
  assert [w.start for w in longform.plan_windows(30, 8, 0)] == [0, 8, 16, 24]
  assert longform.keep_frames(750, 0.5) == 375  # paper semantic: keep 15 s of 30 s
  assert longform.keep_frames(500, 0.5, multiple=2) == 250
  assert longform.keep_frames(9, 0.5, multiple=2) == 5  # hop 4 keeps semantic alignment
  with pytest.raises(ValueError):
    longform.plan_windows(0, 8, 4)


def test_long_form_is_flat(bundle):
  """Twice the duration: more windows, but no new trace and the same cache shape."""
  pipe = pipeline_lib.Pipeline(bundle, devices=ONE_DEVICE, codec_window_seconds=1.0)
  short = pipeline_lib.Request('a', pipeline_lib.plain_story('calm piano', 0.6), 0.6)
  pipe.generate([short])
  traces = dict(decode.TRACE_COUNTS)
  shapes = {s: d.cache_shape(1) for s, d in pipe.decoders.items()}
  windows = pipe.num_windows(1.2)
  assert all(windows[s] > pipe.num_windows(0.6)[s] > 1 for s in windows)
  long = pipeline_lib.Request('b', pipeline_lib.plain_story('calm piano', 1.2), 1.2)
  [result] = pipe.generate([long])
  assert {s: decode.TRACE_COUNTS[s] for s in traces} == traces
  assert {s: d.cache_shape(1) for s, d in pipe.decoders.items()} == shapes
  assert shapes['semantic'][2] == bundle.stages['semantic'].layout.sequence_length
  assert result.audio.shape == (int(1.2 * 24000),) and np.isfinite(result.audio).all()


def _files(out):
  return sorted(f for f in os.listdir(out) if not f.startswith('.'))


def test_sample_cli_gallery_and_bad_lines(bundle_path, tmp_path, capsys):
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text('\n'.join([
      json.dumps({'id': 'story', 'story': [{'text': 'calm', 'start': 0, 'end': 0.4},
                                           {'text': 'uplifting theme', 'start': '0:00.4',
                                            'end': 0.8}]}),
      '{"prompt": "broken json", ',
      json.dumps({'prompt': 'slow harp', 'duration': 400}),
      json.dumps({'prompt': '   '}),
      json.dumps({'id': 'harp', 'prompt': 'violin & harp', 'duration': 0.5}),
  ]) + '\n')
  out = tmp_path / 'out'
  argv = ['--bundle', bundle_path, '--out', str(out), '--devices', '1', '--no_progress',
          '--batch_size', '1', '--codec_window_seconds', '1', '--duration', '0.5',
          '--prompts_file', str(prompts),
          '--prompt', 'a <script>alert("x")</script> tune']
  assert sample.main(argv) == 1  # items were skipped, the rest was written
  err = capsys.readouterr().err
  for line in (f'skipped: {prompts}:2: not valid JSON', f'skipped: {prompts}:3: duration 400 s '
               'exceeds the limit of 300 s', f'skipped: {prompts}:4: empty prompt'):
    assert line in err
  assert _files(out) == sorted(['00_a_script_alert_x_script_tune.png',
                                '00_a_script_alert_x_script_tune.wav', 'harp.png', 'harp.wav',
                                'index.html', 'manifest.json', 'story.png', 'story.wav'])
  wav, rate = sf.read(out / 'story.wav')
  assert rate == 24000 and wav.shape == (int(0.8 * 24000),)
  manifest = json.load(open(out / 'manifest.json'))
  by_id = {s['id']: s for s in manifest['samples']}
  assert by_id['story']['story'][1] == {'text': 'uplifting theme', 'start': 0.4, 'end': 0.8}
  assert by_id['harp']['duration'] == 0.5 and by_id['harp']['prompt'] == 'violin & harp'
  assert set(by_id['harp']['real_time_factor']) == {'semantic', 'coarse', 'fine', 'codec'}
  assert manifest['bundle']['sha256'] == bundle_lib.load_bundle(bundle_path).sha256
  assert manifest['settings']['fine']['temperature'] == 0.4
  assert [s['where'] for s in manifest['skipped']] == [f'{prompts}:{i}' for i in (2, 3, 4)]
  page = (out / 'index.html').read_text()
  assert '<script>' not in page and '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;' in page
  assert 'violin &amp; harp' in page and 'uplifting theme' in page
  # Determinism: the same seed gives the same audio; another seed other audio.
  again = tmp_path / 'again'
  argv_again = [str(again) if a == str(out) else a for a in argv]
  assert sample.main(argv_again) == 1
  assert (again / 'harp.wav').read_bytes() == (out / 'harp.wav').read_bytes()
  assert (again / 'story.wav').read_bytes() == (out / 'story.wav').read_bytes()
  assert sample.main(argv_again + ['--seed', '7']) == 1
  assert (again / 'harp.wav').read_bytes() != (out / 'harp.wav').read_bytes()


@pytest.mark.parametrize('extra, message', [
    (['--prompt', 'x', '--duration', '0'], 'error: --duration: duration 0 s must be positive'),
    (['--prompt', 'x', '--duration', '301'], 'exceeds the limit of 300 s'),
    (['--prompt', ''], 'error: nothing to generate'),
    (['--story', 'a (0:00-0:10), b (0:05-0:20)'], "story segment 2 ('b'): overlaps segment 1"),
    ([], 'error: no prompts'),
])
def test_sample_cli_errors(bundle_path, tmp_path, capsys, extra, message):
  assert sample.main(['--bundle', bundle_path, '--out', str(tmp_path / 'o'), '--devices', '1',
                      '--no_progress', *extra]) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / 'o' / 'index.html').exists()


def test_sample_cli_unknown_bundle(tmp_path, capsys):
  assert sample.main(['--bundle', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o'),
                      '--prompt', 'x']) == 2
  err = capsys.readouterr().err.strip()
  assert err == f'error: {tmp_path / "nope"}: no such bundle folder'


def test_story_switches_conditioning_per_window(bundle):
  from musiclm_jax.sampling import story  # pylint: disable=g-import-not-at-top
  pipe = pipeline_lib.Pipeline(bundle, devices=ONE_DEVICE)
  pipe.set_mulan_tokens('calm', np.zeros(12))
  pipe.set_mulan_tokens('loud', np.ones(12))
  request = pipeline_lib.Request('s', story.parse_story('calm (0:00-0:00.5), loud (0:00.5-0:01)'),
                                 1.0)
  for stage, rate in (('semantic', 25.0), ('coarse', 50.0)):
    windows = longform.plan_windows(pipe.frames(1.0)[stage],
                                    bundle.stages[stage].layout.target.num_frames,
                                    pipe.keep[stage])
    chosen = [int(pipe._mulan_at([request], longform.conditioning_time(w, rate))[0, 0])
              for w in windows]
    # The segment active at the middle of each window's generated span.
    assert chosen == sorted(chosen) and chosen[0] == 0 and chosen[-1] == 1
    switch = chosen.index(1)
    assert longform.conditioning_time(windows[switch], rate) >= 0.5
    assert longform.conditioning_time(windows[switch - 1], rate) < 0.5


def test_sample_cli_failed_batch_is_reported(bundle_path, tmp_path, monkeypatch, capsys):
  def boom(self, batch, on_window):
    raise RuntimeError('out of memory\nsecond line')
  monkeypatch.setattr(pipeline_lib.Pipeline, '_generate_batch', boom)
  out = tmp_path / 'o'
  assert sample.main(['--bundle', bundle_path, '--out', str(out), '--devices', '1',
                      '--no_progress', '--prompt', 'calm', '--duration', '1']) == 1
  assert 'skipped: --prompt 1 (00_calm): generation failed: RuntimeError: out of memory' in (
      capsys.readouterr().err)
  manifest = json.load(open(out / 'manifest.json'))
  assert manifest['samples'] == [] and len(manifest['skipped']) == 1
  assert (out / 'index.html').exists()
