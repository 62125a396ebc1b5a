"""musiclm_jax: MusicLM in JAX/Flax, from a laptop demo to TPU pods."""

import setuptools

setuptools.setup(
    name='musiclm_jax',
    version='0.1.0',
    description='MusicLM (text/melody -> music) in JAX/Flax: codec, semantic tokens, MuLan, '
                'three-stage LMs, batched sampling',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.12',
    packages=setuptools.find_packages(include=['musiclm_jax', 'musiclm_jax.*', 'tasks']),
    install_requires=[
        # Exact pins live in requirements.txt; these are the library's direct needs.
        'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'chex', 'numpy', 'gin-config',
        'soundfile', 'soxr', 'tensorboardX', 'tqdm', 'etils',
    ],
    extras_require={
        'data': ['tensorflow', 'tensorflow-text', 'tensorflow-datasets', 'seqio',
                 'sentencepiece', 'music21', 'pretty-midi', 'mido', 'librosa'],
    },
    entry_points={'console_scripts': ['musiclm = musiclm_jax.cli:main']},
)
