"""``python -m visaudio.cli`` (and ``torchrun -m visaudio.cli``): the same command line as the
``visaudio`` console script."""

from visaudio.cli import main

if __name__ == "__main__":  # guarded: importing this module (tooling walking the package) runs nothing
    main()
