"""MkDocs hook: publishes experiments/ (recorded results) inside the site.

The measured figures live beside their scripts in experiments/*/README.md; the pages link
them as experiments/NAME/README.md. Adding the files here (not copying them into docs/)
keeps one source, and lets `mkdocs build --strict` check every link to and inside them.
"""
import pathlib
import shutil
import tomllib

from mkdocs import plugins
from mkdocs.structure import files as mkdocs_files

API_SEARCH_PATH = "build/docs-api"  # mkdocs.yml: plugins.mkdocstrings...paths
_SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}


def on_files(files, config):
  root = pathlib.Path(config["config_file_path"]).parent
  for path in sorted((root / "experiments").rglob("*")):
    if path.is_file() and not _SKIP_PARTS.intersection(path.parts):
      files.append(mkdocs_files.File(
          str(path.relative_to(root)), src_dir=str(root), dest_dir=config["site_dir"],
          use_directory_urls=config["use_directory_urls"]))
  return files


@plugins.event_priority(100)  # before mkdocstrings, which globs its paths in its on_config
def on_config(config):
  """The packages install as treadle.<folder> from folders at the repository root (an
  editable install maps them with an import hook that griffe cannot read), so mkdocstrings
  searches build/docs-api (mkdocs.yml), remade here with treadle/<folder> links to them."""
  root = pathlib.Path(config["config_file_path"]).parent
  package_dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
  namespace = root / API_SEARCH_PATH / "treadle"
  shutil.rmtree(namespace, ignore_errors=True)
  namespace.mkdir(parents=True)
  for package, folder in package_dirs.items():
    parts = package.split(".")
    if len(parts) == 2:  # subpackages (treadle.train.tasks) come with their parent's folder
      (namespace / parts[1]).symlink_to(root / folder)
  return config
