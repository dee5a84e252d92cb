"""The configuration of a pretraining run, resolved in one place.

get_args parses main.py's flags (the original's names and meaning, plus each registered method's
own) and resolve_args builds the run's configuration from them, the method's declared defaults and
the data set's row. Nothing after it writes to the configuration, but for one setting of
--dataset folder: the --aug default waits for main() to read the folder (resolve_aug). A flag
that contradicts --method is refused, not overwritten. Everything is decided before any data is loaded or any folder is made;
print_config shows the settings that apply to this run at its start.
"""
import argparse
import math

import torch

from mixbt import cli_args
from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import folder_data
from mixbt.errors import MixBTError
from mixbt.methods import METHODS, add_method_args, method_flag_names, original_method_name
from mixbt.runtime import str2bool


def get_args(argv=None):
    p = build_parser()
    return resolve_args(p.parse_args(argv), explicit_flags(p, argv))


def build_parser():
    """main.py's parser: the original flags, the researchers', the recipe's, then each method's."""
    p = cli_args.parser('Mixed Barlow Twins pretraining')
    add_original_flags(p)
    add_run_flags(p)
    add_recipe_flags(p)
    add_method_args(p)
    return p


def add_original_flags(p):
    """The original flags: names, meaning and defaults of the mix-bt main.py. The Barlow Twins
    family's own (--lmbda, --corr_neg_one/--corr_zero, --is_mixup, --mixup_loss_scale) come
    with its method (add_method_args)."""
    a = p.add_argument
    a('--dataset', default='cifar10', choices=datasets.DATASETS,
      help='data set to pretrain on (folder: your own images under --data_root, docs/own-images.md)')
    cli_args.add_common(p, 'arch', arch=dict(default='resnet50', help='backbone'))
    a('--feature_dim', default=128, type=int, help='projector output dimension (small data sets)')
    a('--temperature', default=0.5, type=float, help='temperature of the weighted kNN monitor')
    a('--k', default=200, type=int, help='neighbours of the weighted kNN monitor')
    a('--batch_size', '--batch-size', default=512, type=int, help='global batch size (split over processes)')
    a('--epochs', default=1000, type=int, help='training epochs')
    a('--lr', default=None, type=float,
      help='base learning rate (x batch/256 with the cosine schedule); default 1e-3, baselines: their recipe')
    a('--lr_shed', default=None, choices=['step', 'cosine', 'cosine_exact'],
      help="learning-rate schedule; default step (ImageNet: cosine_exact), baselines: their recipe. cosine: the "
           "original's per-step cosine (epochs counted from 1: the first step is at 1/10 of the warm-up, the last "
           "epoch passes beyond the cosine's end); cosine_exact: warm-up from 0, cosine ending at the last step "
           "(the official Barlow Twins and the ImageNet scripts)")
    cli_args.add_common(p, 'gpu')


def add_run_flags(p):
    """Added for researchers: where the run lives, what it monitors and saves, how it resumes."""
    a = p.add_argument
    a('--method', default=None, choices=list(METHODS), help='SSL method (default: from --is_mixup/--corr_neg_one)')
    cli_args.add_common(p, 'data_root', 'results_dir', 'seed', 'workers', 'download', 'subset', 'skip_bad_images',
                        'resume', 'run_name', resume=dict(help='run folder or last.pth to continue from'),
                        run_name=dict(help='fixed run folder name under --results_dir; a run restarted with the '
                                           'same name resumes from its last.pth automatically (default on SLURM: '
                                           'slurm<job id>_<digest of its settings>, so a requeued job continues)'))
    a('--knn_every', default=5, type=int, help='kNN monitor every N epochs (0: never); always at the end')
    a('--knn_init', action='store_true',
      help='also run the kNN monitor on the randomly initialised backbone, logged as epoch 0: the baseline '
           'that pretraining has to beat')
    a('--overfitting_monitors', default=True, type=str2bool,
      help='with the kNN monitor, also log gen_gap (leave-one-out kNN top-1 on the memory bank minus test top-1), '
           'the effective ranks of features and embeddings and the Barlow Twins off-diagonal mass of held-out '
           'view pairs (mixbt/monitors.py; about 8 %% of the kNN monitor\'s time)')
    a('--save_every', default=50, type=int, help='keep a model snapshot every N epochs (0: never)')
    a('--log_every', '--print-freq', default=20, type=int, help='progress-bar/NaN-check interval in steps')
    a('--visuals', default=True, type=str2bool,
      help='at the end: nearest-neighbour retrievals and a 2-D map of the test embeddings (PNG, wandb)')


def add_recipe_flags(p):
    """The optimiser and schedule (defaults: the method's, then the data set's row), the ImageNet
    recipe (official Barlow Twins flags), the views, and speed."""
    a = p.add_argument
    a('--optimizer', default=None, choices=['adam', 'lars', 'sgd'],
      help="default: the method's, else the data set's row (lars for imagenet, else adam)")
    a('--weight_decay', '--weight-decay', default=None, type=float, help='default: 1e-6 (Adam, LARS)')
    a('--warmup_epochs', default=None, type=float,
      help='linear warm-up epochs of the cosine schedule; default 10 (INTL: 2)')
    a('--warmup_steps', default=None, type=int,
      help='linear warm-up steps of the step schedule; default 0 (SimCLR, BYOL, W-MSE, CW-RGP: 500)')
    a('--projector', default=None, help='projector MLP sizes, e.g. 8192-8192-8192 (ImageNet default)')
    a('--learning-rate-weights', dest='lr_weights', default=0.2, type=float, help='ImageNet LARS lr (weights)')
    a('--learning-rate-biases', dest='lr_biases', default=0.0048, type=float, help='ImageNet LARS lr (biases, BN)')
    a('--image_size', default=224, type=int,
      help='ImageNet crop size; --dataset folder: the image size (about 32: CIFAR stem and views, 64: '
           'STL-10/Tiny-ImageNet, 96 and up: ImageNet)')
    folder_data.add_folder_args(p)
    a('--ref_world_size', default=None, type=int,
      help='gradients x 1/R: the update of a reference run on R GPUs whose cross-correlation was summed with a '
           'plain all_reduce (the released Mix-BT ImageNet runs: 8); 1 = the true gradient. Default: 8 for the '
           'Barlow Twins family on ImageNet, 1 otherwise')
    a('--aug', default=None, choices=['cpu', 'gpu'],
      help='cpu: torchvision/PIL views in workers; gpu: batched views on the training device')
    a('--pipeline', default='mixbt', choices=datasets.PIPELINES,
      help="views and normalisation of training and evaluation: mixbt (the data set's own), or wmse (the W-MSE "
           "code's, as the paper's baselines ran; also logs its Euclidean 5-NN and, at the end, its linear "
           "evaluation; docs/protocol.md section 6)")
    add_speed_flags(p)


def add_speed_flags(p):
    a = p.add_argument
    a('--fuse_views', default=True, type=str2bool, help='one forward over all views, per-view BatchNorm')
    a('--sync_bn', default=True, type=str2bool,
      help='BatchNorm statistics over the global batch in multi-process runs, as one process would compute them '
           '(false: per-process statistics, faster, not equal to one process)')
    cli_args.add_common(p, 'precision', precision=dict(
        help='auto: bf16 on CUDA where supported (fp16 otherwise; the ImageNet reference recipe: fp16, as the '
             'original), fp32 on CPU'))
    a('--channels_last', default=True, type=str2bool,
      help='NHWC memory format (faster for cuDNN and for oneDNN on CPU)')
    a('--compile', action='store_true', help='torch.compile the model')
    a('--accumulate', default=1, type=int,
      help='process each batch as N micro-batches with the exact full-batch loss and gradient at the projector '
           'output (two passes, one extra forward; peak memory about 1/N): mixbt, barlowtwins, hsic. The '
           "backbone's BatchNorm still normalises each micro-batch on its own")


def explicit_flags(parser, argv):
    """The dests given on the command line (as opposed to defaults)."""
    saved = [(a, a.default) for a in parser._actions]
    saved_defaults = dict(parser._defaults)
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        parser._defaults.clear()
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults.update(saved_defaults)


def resolve_args(args, explicit=()):
    """The run's whole configuration, resolved in one place: the method's per-data-set defaults
    fill the flags left unset, then the method derives and checks its settings, then the
    general defaults and checks. Raises MixBTError before anything is created or loaded."""
    original_method_name(args, explicit)
    cls = METHODS[args.method]
    for key, value in cls.fixed.items():
        if key in explicit and getattr(args, key) != value:
            given = getattr(args, key)
            hint = {('is_mixup', True): 'mixbt', ('corr_neg_one', True): 'hsic', ('is_mixup', False): 'barlowtwins',
                    ('corr_neg_one', False): 'barlowtwins'}[(key, given)]
            typed = {'corr_neg_one': '--corr_neg_one' if given else '--corr_zero'}.get(key, f'--{key} {str(given).lower()}')
            raise MixBTError(f'--method {args.method} contradicts {typed}: drop {typed.split()[0]}, or use --method {hint}')
    spec = datasets.spec_of(args, read_folder=False)  # a folder: its stem and views; main() reads the folder
    for key, value in cls.defaults(spec, args.dataset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    cls.resolve(args)
    datasets.select_pipeline(args.dataset, args.pipeline)  # MixBTError where the data set has no such pipeline
    resolve_aug(args, spec)
    if args.precision == 'auto' and getattr(args, 'bt_loss', None) == 'imagenet_reference':
        args.precision = 'fp16'  # the original ImageNet script: autocast (fp16) with a GradScaler
    # The data set's row states its recipe (data.Spec: optimizer, lr_shed, projector); then the general defaults.
    for key, value in (('optimizer', spec.optimizer), ('lr_shed', spec.lr_shed), ('projector', spec.projector or None),
                       ('weight_decay', 1e-6), ('lr', 1e-3), ('warmup_epochs', 10.0), ('warmup_steps', 0),
                       ('ref_world_size', 1)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_args(args)
    return args


def resolve_aug(args, spec):
    """--aug: gpu by default where the device views can make the data set's views (images held in
    memory, no blur or solarisation: not a folder at 96 px and up, nor a streamed one), cpu
    otherwise; --aug gpu is refused where they cannot. Whether a folder is streamed is known once
    main() has read it: the default waits for that second call, with the folder's resolved row."""
    blurred = any(spec.recipe.blur + spec.recipe.solarize)
    unread = args.dataset == datasets.FOLDER and not spec.identity  # data.spec_of(args, read_folder=False)
    if args.aug is None and not unread:  # the device main.py runs on (distributed.init_distributed): CUDA if any
        on_cuda = torch.cuda.is_available() and args.gpu >= 0
        args.aug = 'gpu' if on_cuda and spec.in_memory and not spec.streamed and not blurred else 'cpu'
    if args.aug != 'gpu':
        return
    if not spec.in_memory:
        raise MixBTError(f'--aug gpu needs an in-memory data set; {args.dataset} uses --aug cpu')
    if blurred:
        raise MixBTError(f'--aug gpu has no blur or solarisation, which the views of --dataset {args.dataset} at '
                         f'--image_size {args.image_size} have: use --aug cpu, or an --image_size below 96')
    if spec.streamed:
        raise MixBTError(f'--aug gpu needs the images in memory, and the folder {args.data_root} is streamed (more '
                         f'than --max_memory_gb {args.max_memory_gb:g}): use --aug cpu, raise --max_memory_gb or '
                         'pass --subset N')


def check_args(args):
    """Settings that cannot mean anything: one clear error each, before any work."""
    cli_args.check_ranges(args, at_least_1=('epochs', 'feature_dim', 'k', 'log_every', 'image_size', 'ref_world_size',
                                            'accumulate'),
                          non_negative=('knn_every', 'save_every', 'subset', 'workers', 'warmup_epochs',
                                        'warmup_steps', 'weight_decay', 'mixup_warmup_epochs'))
    if args.batch_size < 2:
        raise MixBTError(f'--batch_size {args.batch_size}: BatchNorm and the batch statistics of the losses need at '
                         'least 2 images per batch')
    if not args.temperature > 0 or not math.isfinite(args.temperature):
        raise MixBTError(f'--temperature {args.temperature} must be a positive number (the kNN weights are '
                         'exp(similarity / temperature))')
    cli_args.check_ranges(args, positive=('lr', 'lr_weights', 'lr_biases'))
    if args.projector is not None:
        sizes = args.projector.split('-')
        if not all(s.isdigit() and int(s) > 0 for s in sizes):
            raise MixBTError(f'--projector {args.projector!r}: expected positive layer sizes joined by -, '
                             'e.g. 8192-8192-8192')


def applicable_settings(args):
    """The settings that apply to this run: its method's flags (not the other methods'), and the
    optimiser's and schedule's own (LARS: per-group rates; Adam/SGD: --lr; the step schedule:
    warm-up steps; the cosine: warm-up epochs)."""
    other_methods = set(method_flag_names()) - set(METHODS[args.method].flag_names())
    lars = args.optimizer == 'lars'
    cosine = lars or args.lr_shed in ('cosine', 'cosine_exact')
    skip = other_methods | ({'lr'} if lars else {'lr_weights', 'lr_biases'}) | \
        ({'warmup_steps'} if cosine else {'warmup_epochs'})
    if args.dataset != datasets.FOLDER:
        skip |= {'folder_labels', 'max_memory_gb'}
        if datasets.SPECS[args.dataset].protocol != 'imagenet':  # crops of --image_size: the ImageNet code's
            skip |= {'image_size'}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip and v is not None}


def print_config(args, device):
    """The resolved configuration, as the run will use it (nanoGPT prints its config the same way)."""
    rows = [f'  {k:<22} {v}' for k, v in applicable_settings(args).items()]
    print(f'Configuration ({D.world_size()} process(es) on {device}):\n' + '\n'.join(rows), flush=True)
