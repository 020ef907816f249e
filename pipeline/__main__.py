"""``python -m pipeline``: the same command as the ``nqloihi`` script (:func:`pipeline.cli.script`)."""
from pipeline.cli import script

if __name__ == "__main__":
    script(prog="python -m pipeline")
