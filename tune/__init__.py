"""Hyperparameter sweeps of FAIR on Ray Tune + Optuna, each trial a Ray Train TorchTrainer (`fair sweep`).

Modules: space (search space YAML -> Optuna), sweep_config (the sweep file), storage (the sweep's layout,
written through results.store), ray_session (Ray start/attach, resource arithmetic), trainable (trial driver +
per-worker fn), searcher (one Optuna study per dataset, per-dataset ASHA), progress (driver log lines),
sweep (run / resume), cli.
"""
