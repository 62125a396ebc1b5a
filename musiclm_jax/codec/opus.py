"""Opus reference codec: a round trip through opus-tools' `opusenc`/`opusdec` and its bitrate.

The bitrate is measured from the Ogg packets, since libopus does not go below ~5-6 kbps
whatever is requested. Needs the Debian package opus-tools (`opus_version` checks for it).
"""

import os
import shutil
import subprocess
import tempfile

import numpy as np

from musiclm_jax import audio as audio_lib


def ogg_packet_sizes(data: bytes) -> list[int]:
  """Byte sizes of the packets of a single-stream Ogg file (header packets included)."""
  sizes, current, pos = [], 0, 0
  while pos < len(data):
    if data[pos:pos + 4] != b'OggS' or pos + 27 > len(data):
      raise ValueError(f'not an Ogg page at byte {pos}')
    nseg = data[pos + 26]
    lacing = data[pos + 27:pos + 27 + nseg]
    pos += 27 + nseg + sum(lacing)
    for value in lacing:
      current += value
      if value < 255:
        sizes.append(current)
        current = 0
  return sizes


def opus_version() -> str:
  """`opusenc --version` first line, or raises RuntimeError when opus-tools is missing."""
  for tool in ('opusenc', 'opusdec'):
    if shutil.which(tool) is None:
      raise RuntimeError(f'{tool} not found: install the Debian package opus-tools')
  out = subprocess.run(['opusenc', '--version'], capture_output=True, text=True, check=False)
  return (out.stdout or out.stderr).splitlines()[0].strip()


def opus_roundtrip(wav: np.ndarray, *, sample_rate: int, kbps: float,
                   workdir: str | None = None) -> tuple[np.ndarray, dict[str, float]]:
  """Encodes [N] audio with `opusenc --bitrate kbps` and decodes it with `opusdec --rate`.

  opusdec drops the encoder's pre-skip, so the output is time-aligned with the input; it is
  cut or zero-padded to N samples.

  Returns:
    (float32 [N] decoded audio, {'payload_kbps': Opus packets only, 'file_kbps': whole .opus
     file incl. Ogg pages and headers, 'bytes': file size}).
  """
  wav = np.clip(np.asarray(wav, np.float32).reshape(-1), -1.0, 1.0)
  seconds = wav.size / sample_rate
  with tempfile.TemporaryDirectory(dir=workdir, prefix='opus_') as tmp:
    src, enc, dec = (os.path.join(tmp, n) for n in ('in.wav', 'x.opus', 'out.wav'))
    audio_lib.write_wav(src, wav, sample_rate=sample_rate)
    for cmd in (['opusenc', '--quiet', '--bitrate', f'{kbps:g}', src, enc],
                ['opusdec', '--quiet', '--rate', str(sample_rate), enc, dec]):
      run = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if run.returncode:
        raise RuntimeError(f'{" ".join(cmd[:4])} failed ({run.returncode}): '
                           f'{run.stderr.strip()[-300:]}')
    with open(enc, 'rb') as f:
      data = f.read()
    decoded = _read_wav(dec)
  payload = sum(ogg_packet_sizes(data)[2:])  # skip OpusHead and OpusTags
  decoded = decoded[:wav.size]
  decoded = np.pad(decoded, (0, wav.size - decoded.size))
  return decoded, {'payload_kbps': 8 * payload / seconds / 1000,
                   'file_kbps': 8 * len(data) / seconds / 1000, 'bytes': float(len(data))}


def _read_wav(path: str) -> np.ndarray:
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  wav, _ = sf.read(path, dtype='float32', always_2d=True)
  return wav.mean(axis=-1)
