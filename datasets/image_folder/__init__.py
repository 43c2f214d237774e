"""``image_folder``: unlearn images of a folder of your own (docs/image-folder.md)."""
from unlearnbench.datasets.image_folder.task import ImageFolder, ImageFolderOptions  # noqa: F401  (registers the task)
