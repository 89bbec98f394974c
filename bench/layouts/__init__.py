"""Datasets as they lie on disk: the standard paired layouts of the tasks' benchmark sets.

Every task reads real pairs instead of its bundled photographs when given ``--data DIR`` (a dataset in one
of the layouts below, recognised from the tree or named with ``--layout NAME``) or the general form
``--input DIR --target DIR``. It then synthesises nothing: the degraded images are the set's own (except
for HR-only super-resolution sets, whose inputs are made by bicubic downscaling, as papers do).

Layouts (``bench list layouts``):

========  ==========  ==================================================================================
rain100   derain      Rain100L / Rain100H (Yang et al., CVPR 2017, "Deep joint rain detection and
                      removal"): ``rain-N.png`` + ``norain-N.png`` in one folder, or ``rain/`` (``rainy/``)
                      + ``norain/`` folders (same names, or the prefixed ones), or ``rainy/rain-N.png`` +
                      ``norain-N.png`` beside it; under ``train/`` and ``test/`` where present.
rain1400  derain      Rain1400 / Rain12600 (Fu et al., CVPR 2017, "Removing rain from single images via
                      a deep detail network"): ``rainy_image/N_k.jpg`` -> ``ground_truth/N.jpg`` (14 rainy
                      variants per clean image), under ``training/`` and ``testing/``.
lol       lowlight    LOL (Wei et al., BMVC 2018, "Deep Retinex decomposition"): ``our485/{low,high}``
                      (train) and ``eval15/{low,high}`` (test), same names; LOL-v2's
                      ``Train|Test/{Low,Normal}`` (``lowN.png`` -> ``normalN.png``) too.
uieb      underwater  UIEB (Li et al., TIP 2019, "An underwater image enhancement benchmark dataset and
                      beyond"): ``raw-890/`` + ``reference-890/``, same names. It has no official split.
reside    dehaze      RESIDE (Li et al., TIP 2019, "Benchmarking single-image dehazing and beyond"):
                      ``hazy/NNNN_k[_beta].png`` -> ``clear/NNNN.png`` or ``gt/NNNN.png`` (several hazy
                      versions per clean image); ITS / OTS (or ``train/``) train, SOTS (or ``test/``) test.
div2k     sr          DIV2K (Agustsson & Timofte, CVPRW 2017, NTIRE): ``*_HR/NNNN.png`` with
                      ``*_LR_bicubic/X{2,3,4}/NNNNx{2,3,4}.png``; ``DIV2K_train_HR`` (and Flickr2K_HR)
                      train, ``DIV2K_valid_HR`` test. Without an ``_LR_bicubic`` folder the LR is made.
hr_only   sr          Set5 (Bevilacqua et al., BMVC 2012), Set14 (Zeyde et al., 2010), B100 (Martin et
                      al., ICCV 2001), Urban100 (Huang et al., CVPR 2015), Manga109: HR images only (or
                      EDSR's ``Set5/HR`` + ``Set5/LR_bicubic/X2``) as the test set, beside a training set
                      of HR images (``train/`` or ``DIV2K_train_HR/``).
paired    every task  your own pairs: ``input/`` + ``target/`` with the same file names, optionally under
                      ``train/`` and ``test/`` (the folder task's layout; MPRNet's ``Datasets/`` tree too).
========  ==========  ==================================================================================

Recognition: a task tries its own layouts and ``paired``; a layout recognises a tree from its folder names
and a first pair whose partner exists. One recognised layout is used; of several, the only one that
finds both a train and a test part (or a tree without parts); otherwise the error lists them. A tree that
no layout recognises is a one-line error listing the task's layouts and what each expects.

Parts, scenes and pools (the protocol's four disjoint pools, split by source image):

- A set's own split is kept: its test part's pairs are the ``test`` pool, exactly; its train part is split
  into ``owner``, ``attacker`` and ``calib`` by scene. Several test sets in one tree (SOTS indoor and
  outdoor, Set5 and Set14, MPRNet's Rain100L/Rain100H/Test100) need ``--set task.test_set=NAME``, except
  RESIDE, which pairs ITS with SOTS/indoor and OTS with SOTS/outdoor, as its authors do.
- A scene is the clean image a degraded one pairs with, within its part: Rain1400's 14 rainy variants of
  one clean image, RESIDE's hazy versions of one clear image, are one scene and stay in one pool.
  ``--scene-pattern REGEX`` names scenes otherwise (its group ``scene``, else its first group, else the
  whole match, searched in the pair's name: the degraded file's name without extension).
- Train scenes, in natural name order (``2`` before ``10``), are cut into consecutive blocks: ``owner``
  50 %, ``attacker`` 37.5 %, ``calib`` 12.5 % (the folder task's 40/30/10 of the non-test part), each at
  least one scene, ``owner`` taking what rounding leaves. Consecutive blocks keep neighbouring scenes
  (frames, crops of one photograph) together.
- A set with no split of its own (UIEB; the folder task's ``input/`` + ``target/``; a flat folder of HR
  photographs) is cut the folder task's way: ``owner`` 40 %, ``attacker`` 30 %, ``calib`` 10 %, ``test``
  20 % of its scenes in that order (so test is the last fifth by name). UIEB papers hold out 90 of the 890
  images chosen at random and publish no list: give yours with ``--split-file`` to match one.
- A set with a test part and no train part (SOTS alone, Set5 alone, LOL's ``eval15`` alone) is an error
  that names the training set to add: the suite never trains and scores on one set's test images. A data
  folder named like a part (``test``, ``eval15``, ``SOTS``, ``train``) is read as that part alone.
- The profile's ``image_size``, ``variants``, ``calib_pool`` and ``calib_draws`` shape the bundled
  photographs only: a set's pairs are fixed, used at full size, one draw each.
- ``--split-file FILE`` assigns pairs to pools: one ``NAME POOL`` per line, NAME a pair's name or a scene
  (``PART/NAME`` where names repeat across parts), POOL one of ``train``, ``test``, ``owner``, ``attacker``,
  ``calib`` and the line's last word, so NAME may hold spaces, commas and ``#`` (``my photo #3, test``); a
  NAME in double quotes is taken as written (``""`` for a quote). A line starting with ``#``, and a ``#``
  after POOL, begin comments. Unlisted pairs keep their part (a set without parts: ``train``); ``train``
  scenes are cut into the train pools the file leaves empty (all three if it fills them all). Variants of
  one scene must share a pool.
- Leakage is refused: a test image that an ``owner``, ``attacker`` or ``calib`` pair holds too (the same file,
  a link to it, a byte-for-byte copy, or a near-identical image: the clean images' 16x16 grey thumbnails
  correlating above 0.98) is an error naming both files; ``--set task.allow_leakage=true`` scores anyway.

Pairs must agree in size: the clean image ``scale`` times the degraded one. Two layouts allow documented
slack, as their sets need: ``div2k``/``hr_only`` crop the HR image's right and bottom to a multiple of the
scale (MATLAB's ``modcrop``; DIV2K's x3 LR are floor(HR / 3)), and ``reside`` centre-crops a clean image up
to 32 px larger than its hazy one (SOTS indoor's GT is 640x480 for 620x460 hazy images, cropped the same way
by RESIDE's evaluation). HR-only inputs are the task's own degradation of the (mod-cropped) HR image: for
``sr``, antialiased bicubic, rounded to 8 bits as a saved LR image is.

What is loaded when (memory): naming the data (a task's identity, every cache key) lists the tree and hashes
the files' bytes (the data fingerprint; each file once per process while its size, times and inode stay).
Building the pools (the first ``task.splits()`` of a job) reads each image's header for its size and checks
every pair, so a bad pair fails before any training, then decodes each clean image once for the leakage
check's thumbnail (JPEGs at a reduced scale), keeping only the thumbnail. Pixels are decoded on the first use
of each image and kept, 8-bit as on disk (16-bit images as float32), for the job's life; an image hands out
a float32 copy on each use. A teacher job so holds the owner images it samples, an attack the attacker images
it queries, scoring the test images; a pool a job never touches is never held. A clean image shared by
several variants is held once. Every clean image is refused above ``max_megapixels`` (each is scored whole),
from its header, before Pillow's own decompression-bomb limit could speak. Images decode as a viewer shows
them: EXIF-rotated (header sizes too), CMYK JPEGs converted to RGB (Adobe's inverted ones and plain ones),
16-bit PNGs (grey, RGB, RGBA) at full precision; a link loop in a data folder is skipped with a warning.

Identity: a task with data has the data parameters it was given (paths absolute and resolved: ``ds``,
``ds/``, ``./ds`` and a link to it are one dataset), the layout's name (and the test set chosen) among its
identity's parameters, and a fingerprint of the files (names relative to the data folder, content digests,
and the split file's bytes) beside them, so its results never mix with the bundled data's, and changing
the data, even keeping a file's size and time, recomputes them. Without data, identities are exactly as
before.

Modules, one concept each:

- :mod:`bench.layouts.params`: the data parameters every task takes, and attaching the data to a task
- :mod:`bench.layouts.images`: image files: listing a folder's, reading headers and pixels
- :mod:`bench.layouts.pairs`: what a layout finds in a tree (pairs, parts)
- :mod:`bench.layouts.base`: the layout base class (a tree's train and test parts, the test set chosen)
- :mod:`bench.layouts.paired`: degraded and clean folders paired by file name
- :mod:`bench.layouts.sr`: super-resolution's HR folders, with or without their LR partners
- :mod:`bench.layouts.known`: every layout by name (the table above), and which a task recognises
- :mod:`bench.layouts.splitting`: pairs into the four pools (a set's own split, scenes, split files)
- :mod:`bench.layouts.pools`: pools whose images decode on first use
- :mod:`bench.layouts.source`: one task's dataset: found, checked, fingerprinted, decoded
"""

from bench.layouts.base import Layout
from bench.layouts.images import EXTENSIONS, as_float, image_size, list_images, natural, read_image, read_pixels
from bench.layouts.known import LAYOUTS, describe_layouts, in_all_tasks, layouts_for
from bench.layouts.paired import Form, PairedLayout, pair_folders
from bench.layouts.pairs import Found, Pair, Plan
from bench.layouts.params import (
    DATA_FIELDS,
    DataParams,
    attach_data,
    describe_data_params,
    split_overrides,
    task_fields,
)
from bench.layouts.pools import ImageList, LazyPool
from bench.layouts.source import CENTRE_SLACK, PROGRESS_AT, DataSource
from bench.layouts.splitting import (
    FILE_POOLS,
    FRACTIONS,
    TRAIN_FRACTIONS,
    TRAIN_POOLS,
    assign_pools,
    read_split_file,
    scene_by_pattern,
    split_by_scene,
    split_sizes,
    test_only,
)
from bench.layouts.sr import BENCHMARKS, SRLayout, sr_pairs

__all__ = [
    "BENCHMARKS", "CENTRE_SLACK", "DATA_FIELDS", "EXTENSIONS", "FILE_POOLS", "FRACTIONS", "LAYOUTS", "PROGRESS_AT",
    "TRAIN_FRACTIONS", "TRAIN_POOLS", "DataParams", "DataSource", "Form", "Found", "ImageList", "Layout", "LazyPool",
    "Pair", "PairedLayout", "Plan", "SRLayout", "as_float", "assign_pools", "attach_data", "describe_data_params",
    "describe_layouts", "image_size", "in_all_tasks", "layouts_for", "list_images", "natural", "pair_folders",
    "read_image", "read_pixels", "read_split_file", "scene_by_pattern", "split_by_scene", "split_overrides",
    "split_sizes", "sr_pairs", "task_fields", "test_only",
]
