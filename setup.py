"""Package discovery. Metadata and dependencies are in setup.cfg.

The reference zoo lives in models/ (the product's layout) but is installed as deploykit_zoo: a
top-level package called "models" would shadow the models/ folder that most users' own training
code already has. setup.cfg cannot combine automatic discovery with that renaming, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["deploykit", "deploykit.*"]) + ["deploykit_zoo"],
    package_dir={"deploykit_zoo": "models"},
)
