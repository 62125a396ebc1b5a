"""Optimizer settings for one parameter group: AdamW, warmup + cosine, global-norm clipping."""

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with linear warmup then cosine decay, after global-norm clipping.

  Attributes:
    learning_rate: peak learning rate.
    warmup_steps: linear warmup from 0 to the peak.
    decay_steps: total schedule length; None uses the run's TRAIN_STEPS.
    end_lr_fraction: final learning rate as a fraction of the peak.
    b1, b2, eps: Adam moments.
    weight_decay: decoupled weight decay (AdamW).
    clip_norm: global gradient norm clip; None or 0 disables.
  """
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  decay_steps: int | None = None
  end_lr_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0

  def schedule(self, total_steps: int) -> optax.Schedule:
    decay = max(self.decay_steps or total_steps, self.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=self.learning_rate, warmup_steps=self.warmup_steps,
        decay_steps=decay, end_value=self.learning_rate * self.end_lr_fraction)

  def make(self, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if self.clip_norm:
      parts.append(optax.clip_by_global_norm(self.clip_norm))
    parts.append(optax.adamw(self.schedule(total_steps), b1=self.b1, b2=self.b2, eps=self.eps,
                             weight_decay=self.weight_decay))
    return optax.chain(*parts)
