"""Data: staging, scanning, de-duplication, splitting, synthetic data, tf.data pipeline."""
