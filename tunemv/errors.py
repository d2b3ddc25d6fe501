"""User-facing errors. The CLI prints these as one line and exits non-zero; anything else is a bug."""


class TunemvError(Exception):
    """A problem with the user's input (file, config, camera, model), not with tunemv itself."""


class CameraError(TunemvError, ValueError):
    """An invalid camera: bad intrinsics or extrinsics, or incompatible camera batches."""


class DatasetError(TunemvError):
    """A broken dataset file; the message starts with the offending path."""

    def __init__(self, path, message: str):
        self.path, self.problem = str(path), message
        super().__init__(f"{path}: {message}")
