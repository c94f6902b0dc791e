"""``python -m biaudio.cli``: the same command line as the ``biaudio`` console script."""

from biaudio.cli import main

if __name__ == "__main__":  # guarded: importing this module (tooling walking the package) runs nothing
    main()
