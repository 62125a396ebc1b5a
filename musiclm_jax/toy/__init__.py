"""A toy regression component: exercises the trainer, sharding and gin without any data."""
