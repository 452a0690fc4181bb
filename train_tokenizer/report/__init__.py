"""`dove report`: the paper's tokenizer experiments on a trained checkpoint, as JSON plus PNG figures.

One concept per module: `images` (the data the report runs on), `quality` (PSNR / LPIPS / rFID per forced
token count and at the adaptive length), `fid` (Inception features from a local weights file), `probe` (linear
probe on pooled tokens vs pooled VQGAN latents), `pca` (PCA pictures of features), `queries` (Q-DOVE per query
against the null query), `photos` (scikit-image's photographs: length vs complexity), `figures` (the plots)
and `suite` (the configuration, the run and the files it writes)."""

from .config import SECTIONS, ReportConfig

__all__ = ["SECTIONS", "ReportConfig", "format_report_summary", "run_report"]


def __getattr__(name: str):
    if name in ("run_report", "format_report_summary"):  # plotting and models load on first use only
        from . import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
