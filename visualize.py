"""What a backbone learned, as two pictures: nearest-neighbour retrievals and a 2-D map of the
test embeddings (features: knn.embed_images, the kNN monitor's L2-normalised backbone outputs).

    python3 visualize.py CHECKPOINT [--dataset D] [--data_root data] [--out_dir DIR] [--subset N] [--gpu -1]

writes <checkpoint stem>_retrievals.png and <checkpoint stem>_embedding.png next to the
checkpoint (or in --out_dir, checked before any image is embedded). A checkpoint in a main.py run
folder is shown with the run's own --dataset, --subset and --data_root (its args.json); a released
one embeds every memory and test image unless --subset says fewer. main.py writes <run prefix>_*.png in the run folder at the end of
pretraining. The map is a t-SNE (openTSNE) when that package is installed, else an exact PCA;
its title says which.
"""
import importlib.util
import os
import sys
import tempfile

import numpy as np
import torch

from mixbt import augment
from mixbt import cli_args
from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import folder_data
from mixbt.errors import MixBTError
from mixbt.knn import embed_images

QUERIES, NEIGHBOURS = 10, 8
TILE, FRAME, GAP = 64, 4, 12     # image side, frame width, space between the query and its neighbours (px)
CELL = TILE + 2 * FRAME
HEADER, NAME = 56, 14            # the title band above the grid, the class-name band under each row (px)
ROW = CELL + NAME
RETRIEVALS_SIZE = (CELL * (1 + NEIGHBOURS) + GAP, HEADER + ROW * QUERIES)  # (width, height): 660 x 916 px
TEXT = (20, 20, 20)
EMBEDDING_SIZE = (800, 800)      # 8 x 8 in at 100 dpi
BACKGROUND, QUERY_FRAME, GREEN, RED = (255, 255, 255), (128, 128, 128), (0, 190, 0), (220, 0, 0)
MAX_POINTS = 5000
LEGEND_MAX_CLASSES = 20          # above this a legend hides the map and names nothing readable
TSNE_MIN_POINTS = 10
OPENTSNE_PIN = 'openTSNE==1.0.4'


# ---------------------------------------------------------------- choosing what to show
def pick_queries(labels, n=QUERIES, seed=0):
    """`n` indices spread over the classes (round-robin over the classes in a seeded random order,
    a seeded random image of each), returned sorted by class so that the rows read in class order."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    by_class = [order[labels[order] == c] for c in rng.permutation(np.unique(labels))]
    picked = [members[depth] for depth in range(max((len(m) for m in by_class), default=0))
              for members in by_class if depth < len(members)][:n]
    return np.array(sorted(picked, key=lambda i: (labels[i], i)), dtype=np.int64)


def subsample(n, cap=MAX_POINTS, seed=0):
    """All of range(n), or `cap` of them drawn with the seed, in increasing order."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def nearest_neighbours(query_features, bank_features, k=NEIGHBOURS):
    """Indices (Q, k) of the k most cosine-similar bank entries (features are L2-normalised)."""
    k = min(k, bank_features.shape[0])
    return (query_features @ bank_features.T).topk(k, dim=-1).indices


# ---------------------------------------------------------------- the retrieval grid
def _tile(image):
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(image))
    if img.size != (TILE, TILE):  # 32 px: exact 2x pixels; 96 px: box-filtered down
        img = img.convert('RGB').resize((TILE, TILE), Image.Resampling.NEAREST if img.width < TILE
                                        else Image.Resampling.BOX)
    return np.asarray(img.convert('RGB'))


def class_name(classes, c):
    return classes[c] if classes is not None and 0 <= c < len(classes) else f'class {c}'


def retrieval_texts(prefix, query_labels, neighbour_labels, same_class, classes=None):
    """(title lines, class names per row: the query's, then each neighbour's) of the retrieval grid."""
    same_class = np.asarray(same_class, dtype=bool)
    hits = f' ({same_class.mean() * 100:.0f}% of them)' if same_class.size else ''
    title = [f'{prefix}: nearest-neighbour retrievals ({len(query_labels)} test queries)',
             f'each row: a test query (grey frame), then its {NEIGHBOURS} nearest memory images by cosine similarity',
             f'frame green = same class as the query{hits}, red = another class; under each image: its class']
    names = [[class_name(classes, int(q))] + [class_name(classes, int(c)) for c in row]
             for q, row in zip(query_labels, neighbour_labels)]
    return title, names


def _font(size):
    from PIL import ImageFont
    try:
        from matplotlib import font_manager  # ships DejaVu Sans: the same letters on every machine
        return ImageFont.truetype(font_manager.findfont('DejaVu Sans'), size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default()


def _fit(draw, text, width, size, smallest=8):
    """(text, font): the largest font from `size` down to `smallest` at which `text` fits `width`
    pixels, else the text cut with an ellipsis at the smallest."""
    for s in range(size, smallest - 1, -1):
        font = _font(s)
        if draw.textlength(text, font=font) <= width:
            return text, font
    while text and draw.textlength(text + '…', font=font) > width:
        text = text[:-1]
    return text + '…', font


def retrieval_grid(query_images, neighbour_images, same_class, title=(), names=()):
    """uint8 (height, width, 3) of RETRIEVALS_SIZE: the `title` lines in a HEADER band, then one row
    per query: the query (grey frame), a gap, its neighbours framed GREEN (same class) or RED, and
    each image's name from `names` (rows of query name, neighbour names) under it. Missing rows
    and cells stay blank."""
    from PIL import Image, ImageDraw
    width, height = RETRIEVALS_SIZE
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)

    def put(row, col, image, colour):
        y, x = HEADER + row * ROW, col * CELL + (GAP if col else 0)
        canvas[y:y + CELL, x:x + CELL] = colour
        canvas[y + FRAME:y + FRAME + TILE, x + FRAME:x + FRAME + TILE] = _tile(image)

    for row in range(min(len(query_images), QUERIES)):
        put(row, 0, query_images[row], QUERY_FRAME)
        for col in range(min(len(neighbour_images[row]), NEIGHBOURS)):
            put(row, 1 + col, neighbour_images[row][col], GREEN if same_class[row][col] else RED)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for i, line in enumerate(title[:3]):
        text, font = _fit(draw, line, width - 2 * FRAME, 13 if i == 0 else 11)
        draw.text((FRAME, 4 + (18 + 15 * (i - 1) if i else 0)), text, fill=TEXT, font=font)
    for row, row_names in enumerate(names[:QUERIES]):
        for col, name in enumerate(row_names[:1 + NEIGHBOURS]):
            text, font = _fit(draw, name, CELL - 2, 10, smallest=7)
            x = col * CELL + (GAP if col else 0) + (CELL - draw.textlength(text, font=font)) / 2
            draw.text((x, HEADER + row * ROW + CELL), text, fill=TEXT, font=font)
    return np.asarray(picture)


# ---------------------------------------------------------------- the 2-D map
_noticed = []


def pca_2d(features):
    """The first two principal components, exact (only the top two eigenvectors of the covariance,
    LAPACK's evr; 5000 features: 0.1 s at 512-D, 1 s at 2048-D, where torch's full eigh takes 1 s and 10 s),
    each sign fixed so that its largest-magnitude loading is positive."""
    import scipy.linalg
    x = torch.as_tensor(features, dtype=torch.float64).cpu().numpy()
    x = x - x.mean(0)
    d = x.shape[1]
    _, vectors = scipy.linalg.eigh(x.T @ x, subset_by_index=[max(d - 2, 0), d - 1], driver='evr')
    v = vectors[:, ::-1] if d >= 2 else np.concatenate([vectors, np.zeros_like(vectors)], 1)
    v = v * np.sign(v[np.abs(v).argmax(0), [0, 1]])
    return x @ v


def check_projection(method):
    """True when the map will be a t-SNE; a MixBTError for an unknown method or 'tsne' without openTSNE."""
    if method not in ('auto', 'tsne', 'pca'):
        raise MixBTError(f'projection {method!r}: choose auto, tsne or pca')
    if method == 'pca':
        return False
    if importlib.util.find_spec('openTSNE') is not None:
        return True
    if method == 'tsne':
        raise MixBTError(f'the t-SNE map needs openTSNE: python3 -m pip install {OPENTSNE_PIN} (or choose PCA)')
    if not _noticed:
        _noticed.append(True)
        print(f'visualize: openTSNE is not installed, so the embedding map is a PCA projection '
              f'(python3 -m pip install {OPENTSNE_PIN} for t-SNE)', file=sys.stderr, flush=True)
    return False


def project_2d(features, seed=0, method='auto'):
    """(points (N, 2), method name). method: 'tsne' (openTSNE), 'pca', or 'auto': t-SNE when
    openTSNE is installed (PCA with a notice when not); PCA below TSNE_MIN_POINTS points."""
    if not check_projection(method) or len(features) < TSNE_MIN_POINTS:
        return pca_2d(features), 'PCA'
    import openTSNE
    n = len(features)
    x = np.ascontiguousarray(torch.as_tensor(features, dtype=torch.float32).cpu().numpy())
    # One thread: deterministic, and on a shared CPU far faster than several (5000 x 512: 21 s CPU,
    # 33 s wall on one thread; 36 s CPU, 126 s wall on two, whose threads spin waiting for each other).
    points = openTSNE.TSNE(perplexity=min(30.0, (n - 1) / 3), metric='cosine', random_state=seed,
                           n_jobs=1).fit(x)
    return np.asarray(points), 't-SNE'


def class_colours(num_classes):
    from matplotlib import colormaps
    if num_classes <= 10:
        return colormaps['tab10'].colors[:num_classes]
    if num_classes <= 20:
        return colormaps['tab20'].colors[:num_classes]
    return colormaps['turbo'](np.linspace(0, 1, num_classes))


def embedding_figure(points, labels, classes, title):
    """A matplotlib Figure of EMBEDDING_SIZE: one colour per class, a legend of class names
    (up to LEGEND_MAX_CLASSES classes)."""
    from matplotlib.figure import Figure
    labels = np.asarray(labels)
    present = np.unique(labels)
    num_classes = max(int(present.max()) + 1 if len(present) else 0, len(classes or ()))
    colours = class_colours(num_classes)
    legend = len(present) <= LEGEND_MAX_CLASSES
    fig = Figure(figsize=(EMBEDDING_SIZE[0] / 100, EMBEDDING_SIZE[1] / 100), dpi=100)
    ax = fig.add_axes([0.03, 0.03, 0.72 if legend else 0.94, 0.9])
    for c in present:
        at = labels == c
        ax.scatter(points[at, 0], points[at, 1], s=4, color=colours[c], alpha=0.8, linewidths=0,
                   label=class_name(classes, c))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=3, frameon=False)
    return fig


# ---------------------------------------------------------------- writing
def _take(array, idx):
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(idx, dtype=torch.long, device=array.device)]
    return np.asarray(array)[idx]


def _numpy(array):
    return array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _save_png(path, write):
    tmp = path + '.tmp.png'
    write(tmp)
    os.replace(tmp, path)


def write_visuals(backbone, memory, test, spec, device, out_dir, prefix, classes=None, wandb_run=None, seed=0,
                  max_points=MAX_POINTS, projection='auto', batch_size=512, autocast_dtype=None, channels_last=False):
    """Write <prefix>_retrievals.png and <prefix>_embedding.png in `out_dir` and log both to
    `wandb_run` (when not None); return their paths.

    memory/test: (uint8 images (N, S, S, 3) at the evaluation size, int labels), numpy or torch,
    as main.load_data gives them; spec: the data set's data.SPECS row (mean/std). Retrievals:
    QUERIES test images picked by `seed` over the classes, each with its NEIGHBOURS most
    cosine-similar memory images, framed green (query's class) or red; RETRIEVALS_SIZE pixels.
    Embedding: up to `max_points` test images (a seeded subsample), EMBEDDING_SIZE pixels, mapped
    by `projection` (project_2d: auto, tsne or pca).
    Under torch.distributed every rank must call this (the embedding is shared out, as in
    knn_monitor); only the main process writes and logs, the others return None."""
    from PIL import Image
    check_projection(projection)  # before the embedding: a missing openTSNE is said at once
    memory_labels, test_labels = _numpy(memory[1]), _numpy(test[1])
    queries = pick_queries(test_labels, QUERIES, seed)
    shown = subsample(len(test_labels), max_points, seed)
    wanted = np.union1d(queries, shown)  # embed each test image once
    embed = lambda images, desc: embed_images(backbone, images, spec.mean, spec.std, device, batch_size,
                                              autocast_dtype, channels_last, desc=desc)
    bank = embed(memory[0], 'visualize: memory images')
    test_features = embed(_take(test[0], wanted), 'visualize: test images')
    if not D.is_main():
        return None
    position = {int(i): p for p, i in enumerate(wanted)}
    query_features = test_features[[position[int(i)] for i in queries]]
    neighbours = _numpy(nearest_neighbours(query_features, bank, NEIGHBOURS)) if len(queries) else np.zeros((0, 0), int)
    same_class = memory_labels[neighbours] == test_labels[queries][:, None]
    grid_title, names = retrieval_texts(prefix, test_labels[queries], memory_labels[neighbours], same_class, classes)
    grid = retrieval_grid(_numpy(_take(test[0], queries)), [_numpy(_take(memory[0], row)) for row in neighbours],
                          same_class, grid_title, names)

    points, method = project_2d(test_features[[position[int(i)] for i in shown]], seed, projection)
    title = f'{prefix}: {method} of {len(shown)} test embeddings'
    fig = embedding_figure(points, test_labels[shown], classes, title)

    os.makedirs(out_dir, exist_ok=True)
    paths = (os.path.join(out_dir, f'{prefix}_retrievals.png'), os.path.join(out_dir, f'{prefix}_embedding.png'))
    _save_png(paths[0], lambda p: Image.fromarray(grid).save(p, format='PNG'))
    _save_png(paths[1], lambda p: fig.savefig(p, dpi=100, format='png'))
    if wandb_run is not None:
        try:
            import wandb
            hits = same_class.mean() * 100 if same_class.size else 0.0
            wandb_run.log({
                'visuals/retrievals': wandb.Image(paths[0], caption=f'{len(queries)} test queries and their '
                                                  f'{NEIGHBOURS} nearest memory images: green = same class '
                                                  f'({hits:.0f}% of them)'),
                'visuals/embedding': wandb.Image(paths[1], caption=title)})
        except Exception as e:  # as RunLog: wandb never stops a run
            print(f'wandb.log failed: {e}', file=sys.stderr)
    return paths


# ---------------------------------------------------------------- command line
def load_eval_data(dataset, root, subset=0, download=False, workers=0):
    """(memory (images, labels), test (images, labels), class names): the kNN memory and test
    splits at the evaluation size, as main.load_data gives them; `subset`: the first N of each."""
    spec = datasets.spec_of(dataset)  # a folder: the row get_args resolved
    if not spec.in_memory:
        raise MixBTError(f'visualize.py shows the in-memory data sets ({", ".join(datasets.IN_MEMORY)}); '
                         f'pass --dataset with one of them')
    memory, test = datasets.load_splits(dataset, root, spec.splits[1:], subset, download=download, workers=workers)
    return augment.eval_split(dataset, memory), augment.eval_split(dataset, test), list(memory.classes)


RUN_DEFAULTS = {'subset': 0, 'data_root': 'data'}  # without a run folder; with one, its own values


def get_args(argv=None):
    from mixbt.checkpoints import resolve_dataset_arg, run_args_of_checkpoint
    p = cli_args.parser('Nearest-neighbour retrievals and a 2-D embedding map of a checkpoint')
    a = p.add_argument
    a('model_path', metavar='CHECKPOINT', help='pretrained checkpoint (*_model.pth, last.pth, ...)')
    a('--dataset', default=None, choices=[*datasets.IN_MEMORY, datasets.FOLDER],
      help="default: the one the checkpoint's file name or run folder names, else cifar10")
    a('--data_root', default=None, help="default: the run's own (args.json beside the checkpoint), else data")
    a('--out_dir', default=None, help="default: the checkpoint's folder")
    a('--subset', default=None, type=int,
      help="use only the first N images of the memory and test splits (default: the run's own --subset, "
           "else 0 = all of them)")
    cli_args.add_common(p, 'seed', seed=dict(help='chooses the queries, the mapped subsample and the t-SNE'))
    a('--projection', default='auto', choices=['auto', 'tsne', 'pca'],
      help=f'the embedding map: auto = t-SNE when openTSNE is installed ({OPENTSNE_PIN}), else PCA')
    cli_args.add_common(p, 'gpu')
    a('--batch_size', default=512, type=int)
    cli_args.add_common(p, 'workers', 'download')
    folder_data.add_folder_args(p, evaluation=True)
    args = resolve_dataset_arg(p.parse_args(argv), [*datasets.IN_MEMORY, datasets.FOLDER])
    run = run_args_of_checkpoint(args.model_path)
    run = run if run is not None and run.get('dataset') == args.dataset else {}
    taken = []
    for key, default in RUN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, run.get(key, default))
            taken += [f'--{key} {getattr(args, key)}'] if key in run else []
    if taken and D.is_main():
        print(f'visualize: {" ".join(taken)}: the run\'s own settings (its args.json)', flush=True)
    cli_args.check_ranges(args, at_least_1=('batch_size',), non_negative=('subset', 'workers'))
    folder_data.run_settings(args, args.model_path)  # a folder: the run's image size, labels and memory settings
    folder_data.require(datasets.spec_of(args), 'visualize.py', in_memory=True)  # a folder is read here
    args.out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.model_path))
    check_out_dir(args.out_dir)
    return args


def check_out_dir(out_dir):
    """Refuse an output folder that cannot be written before the embedding (minutes on a CPU), not
    after it. A real probe file: os.access answers yes to root on a read-only mount."""
    probe = os.path.abspath(out_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MixBTError(f'--out_dir {out_dir}: {probe} is a file, not a folder; choose another --out_dir')
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise MixBTError(f'--out_dir {out_dir} (default: the checkpoint\'s folder): cannot write in {probe} '
                         f'({e.strerror or e}); choose a writable --out_dir') from None


def main(argv=None):
    from mixbt.checkpoints import load_backbone
    args = get_args(argv)
    device = D.init_distributed(args.gpu)
    backbone, _, _ = load_backbone(args.model_path, args.dataset)
    backbone.to(device)
    memory, test, classes = load_eval_data(args.dataset, args.data_root, args.subset, args.download, args.workers)
    if D.is_main():
        print(f'visualize: embedding {len(memory[1])} memory and {len(test[1])} test images on {device}'
              + ('' if args.subset else ' (--subset N embeds only the first N of each)'), flush=True)
    prefix = os.path.splitext(os.path.basename(args.model_path))[0]
    paths = write_visuals(backbone, memory, test, datasets.spec_of(args), device, args.out_dir, prefix,
                          classes=classes, seed=args.seed, projection=args.projection, batch_size=args.batch_size)
    if paths:
        print('\n'.join(paths))
    return paths


if __name__ == '__main__':
    from mixbt.runtime import run_command
    run_command(lambda: main())
