"""The `musiclm` command: one entry point that dispatches to each tool's `main(argv)`.

  musiclm train --gin_file=gin/runs/codec_tiny.gin --gin.MODEL_DIR="'/tmp/codec'"
  musiclm data build --corpus synth --config small --data_dir data/
  musiclm sample --bundle BUNDLE --prompt "a calm piano piece" --out out/
"""

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    'train': ('musiclm_jax.train', 'train any component from a gin run file'),
    'data build': ('musiclm_jax.data.build', 'build a corpus (synth, musiccaps, folder)'),
    'data train_spm': ('musiclm_jax.data.train_spm', 'train the sentencepiece text vocabulary'),
    'data precompute': ('musiclm_jax.data.precompute', 'tokenize a corpus with frozen tokenizers'),
    'codec evaluate': ('musiclm_jax.codec.evaluate', 'codec metrics vs Opus'),
    'semantic fit_kmeans': ('musiclm_jax.semantic.fit_kmeans', 'fit the semantic k-means'),
    'mulan fit_rvq': ('musiclm_jax.mulan.fit_rvq', 'fit the MuLan RVQ'),
    'mulan evaluate': ('musiclm_jax.mulan.evaluate', 'MuLan retrieval metrics'),
    'export': ('musiclm_jax.export', 'checkpoints -> sampling bundle'),
    'sample': ('musiclm_jax.sample', 'prompts -> music'),
}


def _usage() -> str:
  lines = ['usage: musiclm COMMAND [args...]', '', 'commands:']
  lines += [f'  {name:<22} {help_}' for name, (_, help_) in COMMANDS.items()]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  for words in (2, 1):
    name = ' '.join(argv[:words])
    if len(argv) >= words and name in COMMANDS:
      module_name = COMMANDS[name][0]
      try:
        module = importlib.import_module(module_name)
      except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
          print(f'musiclm {name}: not available in this version ({module_name} missing)',
                file=sys.stderr)
          return 2
        raise
      return int(module.main(argv[words:]) or 0)
  print(_usage(), file=sys.stderr if argv and argv[0] not in ('-h', '--help') else sys.stdout)
  return 0 if argv[:1] in (['-h'], ['--help']) else 2


if __name__ == '__main__':
  sys.exit(main())
