"""seqio task and mixture registrations (t5x's MIXTURE_OR_TASK_MODULE = 'tasks').

Importing this package registers `synth_audio`, `musiccaps_audio`, `folder_audio` and the
mixture `all_audio` with the data dir $MUSICLM_DATA_DIR and sentencepiece model
$MUSICLM_SPM_MODEL (defaults: ~/tensorflow_datasets and <data_dir>/spm/spm.model). Call
`tasks.audio_tasks.register_audio_tasks(data_dir, spm_path)` to point them elsewhere.
"""

from tasks import audio_tasks

audio_tasks.register_audio_tasks()
from tasks import token_tasks  # noqa: E402,F401  (stage token tasks on $MUSICLM_TOKENS_DIR)
