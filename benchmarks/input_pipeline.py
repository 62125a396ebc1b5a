"""Input pipeline throughput on CPU: the `synth_audio` seqio task through `seqio_input_fn`.

  python benchmarks/input_pipeline.py --data_dir /tmp/synth_data [--config small] \\
      [--batch_size 8] [--clip_seconds 10] [--batches 40] [--spm PATH]

Prints one JSON line: examples/s and audio-seconds/s of `seqio_input_fn` (crop, gain, caption
choice, sentencepiece) and of the text-free `tfds_audio_input_fn`, the time to the first batch,
and the cost of resuming (`start_index` skips per second). When `synth/<config>` is not
prepared under --data_dir, the `tiny` config (8 clips) is built into a temporary folder first
(needs fluidsynth); without --spm (or $MUSICLM_SPM_MODEL) a small sentencepiece model is
trained on the dataset's captions in a temporary folder.
"""

import argparse
import gc
import json
import os
from pathlib import Path
import sys
import tempfile
import time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE_RATE = 24000


def _prepared(data_dir: str, config: str) -> bool:
  return any(Path(data_dir, 'synth', config).glob('*/dataset_info.json'))


def _build_tiny(tmp: str) -> str:
  from musiclm_jax.data.synth.builder import Synth  # pylint: disable=g-import-not-at-top
  print(f'building synth/tiny into {tmp} (synth/small not prepared)', file=sys.stderr)
  Synth(config='tiny', data_dir=tmp, num_workers=1).download_and_prepare()
  return tmp


def _train_spm(data_dir: str, config: str, out: str) -> str:
  """A small sentencepiece model (project settings, soft vocab limit) on the captions."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from musiclm_jax.data import train_spm  # pylint: disable=g-import-not-at-top
  variant = train_spm._variant_dir(  # pylint: disable=protected-access
      Path(data_dir), 'synth', config)
  settings = dict(train_spm.TRAINER_SETTINGS, hard_vocab_limit=False, vocab_size=1000)
  spm.SentencePieceTrainer.train(sentence_iterator=train_spm.tfds_sentences(variant),
                                 model_prefix=os.path.join(out, 'spm'), minloglevel=2,
                                 **settings)
  return os.path.join(out, 'spm.model')


def _rate(it, batches: int, warmup: int) -> tuple[float, float, float, dict]:
  """(s to first batch, batches/s and process CPU s per batch over `batches`, last batch)."""
  t0 = time.perf_counter()
  batch = next(it)
  first = time.perf_counter() - t0
  for _ in range(warmup):
    batch = next(it)
  t1, c1 = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(it)
  cpu = (time.process_time() - c1) / batches
  return first, batches / (time.perf_counter() - t1), cpu, batch


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data_dir', default='/tmp/synth_data')
  p.add_argument('--config', default='small', help='synth config to read')
  p.add_argument('--spm', default=os.environ.get('MUSICLM_SPM_MODEL'))
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--clip_seconds', type=float, default=10.0)
  p.add_argument('--text_length', type=int, default=64)
  p.add_argument('--batches', type=int, default=40, help='timed batches per measurement')
  p.add_argument('--warmup', type=int, default=5)
  p.add_argument('--skip', type=int, default=100, help='start_index for the resume timing')
  args = p.parse_args(argv)

  import seqio  # pylint: disable=g-import-not-at-top
  from musiclm_jax.data import inputs  # pylint: disable=g-import-not-at-top
  from tasks import audio_tasks  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory(prefix='bench_inputs_') as tmp:
    data_dir, config = args.data_dir, args.config
    if not _prepared(data_dir, config):
      data_dir, config = _build_tiny(os.path.join(tmp, 'data')), 'tiny'
    spm_path = args.spm or _train_spm(data_dir, config, tmp)
    audio_tasks.register_audio_tasks(data_dir, spm_path, prefix='bench_',
                                     sources={'synth_audio': f'synth/{config}:1.*.*'})
    clip = int(round(args.clip_seconds * SAMPLE_RATE))
    lengths = {'audio': clip, 'text_tokens': args.text_length}
    common = dict(batch_size=args.batch_size, seed=0, shard_index=0, num_shards=1)
    task_it = inputs.seqio_input_fn(mixture_or_task_name='bench_synth_audio',
                                    feature_lengths=lengths, **common)
    first, bps, cpu, batch = _rate(task_it, args.batches, args.warmup)
    assert batch['audio'].shape == (args.batch_size, clip), batch['audio'].shape
    del task_it, batch  # stop its background prefetching before the next measurement
    gc.collect()
    audio_it = inputs.tfds_audio_input_fn(name=f'synth/{config}', data_dir=data_dir,
                                          clip_samples=clip, gain_db=(-6.0, 0.0), **common)
    audio_first, audio_bps, _, _ = _rate(audio_it, args.batches, args.warmup)
    del audio_it
    gc.collect()
    t0 = time.perf_counter()
    next(inputs.seqio_input_fn(mixture_or_task_name='bench_synth_audio',
                               feature_lengths=lengths, start_index=args.skip, **common))
    resume = time.perf_counter() - t0
    examples = seqio.get_mixture_or_task('bench_synth_audio').source.num_input_examples('train')
    result = {
        'benchmark': 'input_pipeline', 'task': 'synth_audio', 'dataset': f'synth/{config}',
        'train_examples': examples, 'batch_size': args.batch_size,
        'clip_seconds': args.clip_seconds, 'text_length': args.text_length,
        'examples_per_s': round(bps * args.batch_size, 1),
        'audio_seconds_per_s': round(bps * args.batch_size * args.clip_seconds, 1),
        'batch_ms': round(1000 / bps, 2),
        'cpu_ms_per_batch': round(1000 * cpu, 1),
        'first_batch_s': round(first, 2),
        'tfds_audio_examples_per_s': round(audio_bps * args.batch_size, 1),
        'tfds_audio_first_batch_s': round(audio_first, 2),
        'resume_skip_batches': args.skip,
        'resume_first_batch_s': round(resume, 2),
        'cpus': os.cpu_count(),
    }
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
