"""Package list for setuptools (everything else is in pyproject.toml).

``pipelines/`` is the one home of the built-in recipes; a wheel carries them as the data package
``biaudio.recipes`` mapped onto that folder, so ``biaudio build demo`` finds them when installed
(``biaudio.recipe.builtin_recipes``). pyproject.toml alone cannot add a mapped package to a
``packages.find`` result, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["biaudio*", "visaudio*"]), "biaudio.recipes"],
    package_dir={"biaudio.recipes": "pipelines"},
)
