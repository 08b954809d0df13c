"""Lightning callbacks (skill neurons, suppression, run summary, checkpoints) and the run's file formats."""
