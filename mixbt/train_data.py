"""The training data of a pretraining run: the SSL views, made on the CPU in DataLoader workers
(`CPUViews`) or on the training device (`gpu_augment.DeviceViews`), and the kNN monitor's splits."""
import torch

from mixbt import data as datasets
from mixbt import distributed as D


class CPUViews:
    """torchvision/PIL views in DataLoader workers; every rank takes its slice of each global batch."""

    def __init__(self, args, train, n_views, device):
        from mixbt import augment
        views = augment.ssl_views(args.dataset, args.image_size, args.pipeline)
        transform = augment.MultiView([views[i % len(views)] for i in range(n_views)])
        if not datasets.spec_of(args).in_memory:  # an image folder (ImageNet)
            self.dataset = datasets.image_folder(args.dataset, args.data_root, 'train', transform,
                                                 skip_bad=args.skip_bad_images)
        else:
            self.dataset = augment.ArrayDataset(train, transform)
        if args.subset:
            self.dataset = torch.utils.data.Subset(self.dataset, range(min(args.subset, len(self.dataset))))
        self.per_rank = args.batch_size // D.world_size()
        loader_args = dict(num_workers=args.workers, pin_memory=device.type == 'cuda', persistent_workers=False)
        if getattr(args, 'bt_loss', None) == 'imagenet_reference':
            # The original ImageNet script's order, on any number of processes (its loader kept the short last batch).
            self.sampler = ReferenceBatches(len(self.dataset), args.batch_size, args.ref_world_size, args.seed)
            self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, **loader_args)
        else:
            self.sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=D.world_size(),
                                                               rank=D.rank(), shuffle=True, seed=args.seed,
                                                               drop_last=True)
            self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.per_rank, sampler=self.sampler,
                                                      drop_last=True, **loader_args)
        self.seed, self.device = args.seed, device

    def __len__(self):
        return len(self.loader)

    def epoch(self, epoch):
        self.sampler.set_epoch(epoch)
        # Worker seeds derive from this generator: the same epoch gets the same augmentations
        # whether or not the run was interrupted and resumed.
        self.loader.generator = torch.Generator().manual_seed(self.seed * 100003 + epoch * 1009 + D.rank())
        for views, _ in self.loader:
            yield [v.to(self.device, non_blocking=True) for v in views]


class ReferenceBatches:
    """The batches of the original ImageNet script, which ran on R GPUs (--ref_world_size), each
    with a DistributedSampler(num_replicas=R) that pads the data set to a multiple of R, and a
    loader that keeps the short last batch (1,252 steps an epoch on ImageNet at batch 1024). Step i
    is every reference GPU's i-th batch, in GPU order; this process takes the shares of the
    reference GPUs it stands for (R / processes of them, the groups of --bt_loss imagenet_reference),
    so the loss sees each GPU's rows as the original did, on any number of processes."""

    def __init__(self, n, batch_size, ref_world_size, seed):
        from mixbt.errors import MixBTError
        if ref_world_size % D.world_size() or batch_size % ref_world_size:
            raise MixBTError(f'--ref_world_size {ref_world_size} must be a multiple of the {D.world_size()} '
                             f'processes and divide --batch_size {batch_size}')
        self.shards = [torch.utils.data.DistributedSampler(range(n), num_replicas=ref_world_size, rank=r,
                                                           shuffle=True, seed=seed, drop_last=False)
                       for r in range(ref_world_size)]
        per_process = ref_world_size // D.world_size()
        self.mine = range(D.rank() * per_process, (D.rank() + 1) * per_process)
        self.per_gpu = batch_size // ref_world_size

    def set_epoch(self, epoch):
        for shard in self.shards:
            shard.set_epoch(epoch)

    def __len__(self):
        return -(-len(self.shards[0]) // self.per_gpu)

    def __iter__(self):
        orders = [list(self.shards[r]) for r in self.mine]
        for start in range(0, len(orders[0]), self.per_gpu):
            yield [i for order in orders for i in order[start:start + self.per_gpu]]


def build_train_views(args, train, n_views, device):
    if args.aug == 'gpu':
        from mixbt.gpu_augment import DeviceViews
        return DeviceViews(args, train, n_views, device)
    return CPUViews(args, train, n_views, device)


def load_data(args):
    """(SSL training data, kNN memory (images, labels), kNN test (images, labels)); ImageNet: (None, None, None)."""
    from mixbt import augment
    spec = datasets.spec_of(args)
    if not spec.in_memory:
        return None, None, None
    if args.download and D.world_size() > 1:  # rank 0 downloads, the others wait
        if D.is_main():
            datasets.load(args.dataset, args.data_root, spec.splits[0], download=True, workers=args.workers,
                          skip_bad=args.skip_bad_images)
        D.barrier()
    train, memory, test = datasets.load_splits(args.dataset, args.data_root, spec.splits, args.subset,
                                               download=args.download and D.is_main(), workers=args.workers,
                                               skip_bad=args.skip_bad_images)
    return train, augment.eval_split(args.dataset, memory), augment.eval_split(args.dataset, test)
