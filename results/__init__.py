"""Results of FAIR runs and sweeps: versioned parquet tables in a local folder or S3-compatible storage, and
the paper-style tables and plots made from them. Importable without torch, Ray or `fair`."""
from results.errors import ResultsError

__all__ = ["ResultsError"]
