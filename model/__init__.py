"""TRA-Net, its ablation variants, the trainer, evaluation and prediction on new videos."""
