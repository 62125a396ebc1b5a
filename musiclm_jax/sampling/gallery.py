"""Sample outputs: `<id>.wav`, `<id>.png` (log-mel), `manifest.json` and an `index.html` gallery
(+ `<id>_melody.wav`, the input melody, for melody-conditioned samples).

Every file is written atomically (temp file in the same folder, then `os.replace`), so an
interrupted run leaves whole files only; the manifest and the gallery are rewritten after each
sample, so whatever finished stays listed. All text in the HTML is escaped (`html.escape`):
prompts are untrusted input.
"""

import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax import files
from musiclm_jax.files import atomic_write_bytes  # re-exported: gallery.atomic_write_bytes

_ID_CHARS = re.compile(r'[^A-Za-z0-9_.-]+')
SPECTROGRAM = audio_lib.MelConfig(sample_rate=24000, n_fft=1024, hop_length=240, n_mels=128)


def safe_id(text: str, fallback: str) -> str:
  """A file-name-safe id: letters, digits, '_', '.', '-' (at most 80 chars, no leading dot)."""
  clean = re.sub(r'_{2,}', '_', _ID_CHARS.sub('_', str(text))).strip('._-')[:80]
  return clean or fallback


def write_json(path: str, obj: Any) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + '\n').encode('utf-8'))


def write_wav(path: str, wav: np.ndarray, sample_rate: int) -> None:
  audio_lib.write_wav(path, wav, sample_rate=sample_rate)


def log_mel_image(wav: np.ndarray, sample_rate: int) -> np.ndarray:
  """float32 [n_mels, frames] log-mel (padded to whole 10 s blocks so few shapes compile)."""
  config = SPECTROGRAM if sample_rate == SPECTROGRAM.sample_rate else audio_lib.MelConfig(
      sample_rate=sample_rate, n_fft=1024, hop_length=max(1, sample_rate // 100), n_mels=128)
  block = 10 * sample_rate
  padded = np.zeros(max(block, -(-len(wav) // block) * block), np.float32)
  padded[:len(wav)] = wav
  frames = 1 + len(wav) // config.hop_length
  mel = np.asarray(audio_lib.log_mel(padded, config))[:frames]  # [frames, n_mels]
  return mel.T


def write_spectrogram(path: str, wav: np.ndarray, sample_rate: int) -> None:
  """Log-mel spectrogram PNG (matplotlib, Agg backend; no user text is drawn)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg', force=False)
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  image = log_mel_image(wav, sample_rate)
  seconds = len(wav) / sample_rate
  fig = Figure(figsize=(min(16.0, 4.0 + seconds / 4.0), 3.0), dpi=100)
  ax = fig.add_subplot(1, 1, 1)
  ax.imshow(image, origin='lower', aspect='auto', cmap='magma',
            extent=(0.0, max(seconds, 1e-3), 0, image.shape[0]),
            vmin=float(np.max(image)) - 12.0 if image.size else None)
  ax.set_xlabel('seconds')
  ax.set_ylabel('mel band')
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format='png'))


def _e(value: Any) -> str:
  return html.escape(str(value), quote=True)


def render_index(manifest: Mapping[str, Any]) -> str:
  """The gallery page: one card per sample (audio player, spectrogram, prompt, story)."""
  from musiclm_jax.sampling.story import format_time  # pylint: disable=g-import-not-at-top
  settings = manifest.get('settings', {})
  cards, any_melody = [], False
  for s in manifest.get('samples', []):
    story = ''
    if s.get('story'):
      items = ''.join(f'<li><span class="t">{_e(format_time(seg["start"]))}&ndash;'
                      f'{_e(format_time(seg["end"]))}</span> {_e(seg["text"])}</li>'
                      for seg in s['story'])
      story = f'<ol class="story">{items}</ol>'
    prompt = f'<p class="prompt">{_e(s["prompt"])}</p>' if s.get('prompt') else ''
    player = f'<audio controls preload="none" src="{_e(s["wav"])}"></audio>'
    melody = s.get('melody')
    if isinstance(melody, Mapping) and melody.get('wav'):
      any_melody = True
      name = os.path.basename(str(melody.get('path', '')))
      player = (
          '<div class="pair"><div><p class="label">output</p>' + player + '</div>'
          f'<div><p class="label">input melody: {_e(name)} '
          f'({float(melody.get("duration", 0.0)):.1f} s)</p>'
          f'<audio controls preload="none" src="{_e(melody["wav"])}"></audio></div></div>')
    cards.append(
        f'<div class="card"><h2>{_e(s["id"])}</h2>{prompt}{story}{player}'
        f'<img alt="log-mel spectrogram of {_e(s["id"])}" src="{_e(s["png"])}">'
        f'<p class="meta">{float(s["duration"]):.1f} s, seed {_e(s["seed"])}</p></div>')
  skipped = ''
  if manifest.get('skipped'):
    rows = ''.join(f'<li>{_e(k["where"])}: {_e(k["reason"])}</li>' for k in manifest['skipped'])
    skipped = f'<h2>Skipped</h2><ul class="skipped">{rows}</ul>'
  bundle = manifest.get('bundle', {})
  return (
      '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
      '<meta name="viewport" content="width=device-width, initial-scale=1">'
      '<title>musiclm_jax samples</title><style>'
      'body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}'
      '.card{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}'
      '.card img{width:100%;margin-top:.5em}.card audio{width:100%}'
      '.prompt{font-size:1.1em}.meta,.t{color:#666}.skipped{color:#a00}'
      + ('.pair{display:flex;gap:1em}.pair>div{flex:1}.label{color:#666;margin:.2em 0}'
         if any_melody else '') +
      '</style></head><body>'
      f'<h1>musiclm_jax samples</h1><p class="meta">bundle {_e(bundle.get("path", ""))} '
      f'(sha256 {_e(str(bundle.get("sha256", ""))[:12])}); temperatures '
      + _e(' / '.join(f'{settings.get(k, {}).get("temperature", "?")}'
                      for k in ('semantic', 'coarse', 'fine')))
      + f'; {len(cards)} samples</p>' + ''.join(cards) + skipped + '</body></html>\n')


def write_index(out_dir: str, manifest: Mapping[str, Any]) -> None:
  atomic_write_bytes(os.path.join(out_dir, 'index.html'), render_index(manifest).encode('utf-8'))


def write_outputs(out_dir: str, manifest: Mapping[str, Any]) -> None:
  """Rewrites manifest.json and index.html (after every finished sample)."""
  write_json(os.path.join(out_dir, 'manifest.json'), manifest)
  write_index(out_dir, manifest)


def unique_ids(ids: Sequence[str]) -> list[str]:
  """Makes ids unique by suffixing _2, _3, ... to repeats."""
  seen: dict[str, int] = {}
  out = []
  for i in ids:
    if i in seen:
      seen[i] += 1
      candidate = f'{i}_{seen[i]}'
      while candidate in seen:
        seen[i] += 1
        candidate = f'{i}_{seen[i]}'
      i = candidate
    seen.setdefault(i, 1)
    out.append(i)
  return out
