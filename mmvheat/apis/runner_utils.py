# Copyright (c) mmvheat contributors. All rights reserved.
"""One ``train``/``test`` entry point for mmpretrain, mmdet and mmseg configs.

``tools/train.py`` and ``tools/test.py`` are thin wrappers around
:func:`train` and :func:`test`. The library is taken from the config's
``default_scope`` (``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``, which every
config inheriting the libraries' ``_base_/default_runtime.py`` has); the flags
and what they do to the config follow each library's own ``tools/train.py``
and ``tools/test.py`` (mmdet 3.3, mmseg 1.2, mmpretrain 1.2), with these
additions:

* Without CUDA, a distributed run (``--launcher pytorch|slurm|mpi``) uses the
  ``gloo`` backend, and the model is wrapped for data parallelism on the CPU,
  so ``GPUS=2 bash tools/dist_train.sh ...`` runs two CPU processes
  (mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its runner
  gives DistributedDataParallel ``device_ids``: neither works on the CPU, see
  :func:`setup_cpu_distributed`). A config
  whose model uses ``SyncBN`` still cannot train distributed on the CPU
  (torch's SyncBatchNorm needs a GPU); a warning says so. Single-process runs
  are unaffected: mmengine reverts SyncBN to BN there.
* A distributed run ends with a barrier and ``destroy_process_group``: left
  to the interpreter's exit, gloo sometimes aborted the process that
  finished first.
* ``--tta`` on a detection config: mmdet's ``DetTTAModel`` refuses
  instance masks (Mask R-CNN...), so the tools use
  ``mmvheat.MaskDetTTAModel`` in its place, which merges masks with the
  boxes and is ``DetTTAModel`` itself for predictions without masks.
* ``--tta`` on a segmentation config without ``tta_model``/``tta_pipeline``
  raises a clear error (mmseg has no default); mmdet and mmpretrain configs
  get their library's default flip TTA, as their tools do.

Import :mod:`mmvheat` before anything imports mmpretrain, torchvision or
loads a checkpoint (the tools do): it lets torch >= 2.6 load mmengine
checkpoints with ``weights_only=True`` and torchvision import on CPU-only
torch.
"""
import argparse
import contextlib
import copy
import logging
import os
import os.path as osp
import warnings
from importlib import import_module
from typing import List, Optional, Sequence

import mmvheat  # noqa: F401  (first: torch.load and torchvision)
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmvheat.engine import mmcv_ops_in_float32_under_cpu_autocast

__all__ = [
    'LIBRARIES', 'detect_library', 'register_library', 'train_parser',
    'test_parser', 'parse_train_args', 'parse_test_args', 'load_config',
    'merge_common_args', 'setup_train_cfg', 'setup_test_cfg',
    'setup_cpu_distributed', 'build_runner', 'train', 'test'
]

LIBRARIES = ('mmdet', 'mmseg', 'mmpretrain')
CPU_DDP = 'MMVHeatCPUDistributedDataParallel'
MASK_TTA = 'mmvheat.MaskDetTTAModel'

_CFG_OPTIONS_HELP = (
    'override some settings in the used config, the key-value pair in '
    'xxx=yyy format will be merged into config file. If the value to be '
    'overwritten is a list, it should be like key="[a,b]" or key=a,b It also '
    'allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note that the '
    'quotation marks are necessary and that no white space is allowed.')


# -- library ----------------------------------------------------------------
def detect_library(cfg: Config) -> str:
    """The OpenMMLab library a config is for, from its ``default_scope``."""
    scope = cfg.get('default_scope', None)
    filename = getattr(cfg, 'filename', None) or 'the config'
    if scope is None:
        raise ValueError(
            f'{filename} sets no default_scope, so it is unknown whether it '
            f'is a config for {", ".join(LIBRARIES)}. Inherit the library\'s '
            "_base_/default_runtime.py, or set default_scope = 'mmdet' "
            "(or 'mmseg', 'mmpretrain') in the config or with "
            '--cfg-options default_scope=...')
    if scope not in LIBRARIES:
        raise ValueError(
            f'{filename} has default_scope={scope!r}; these tools run '
            f'configs with default_scope in {LIBRARIES}.')
    return scope


def register_library(library: str) -> None:
    """Register the library's modules and make it the default scope."""
    from mmengine.registry import init_default_scope
    import_module(f'{library}.utils').register_all_modules(
        init_default_scope=False)
    init_default_scope(library)
    if library == 'mmdet':
        # As mmdet's tools: fewer torch.compile recompilations.
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()


# -- command lines ----------------------------------------------------------
def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help=_CFG_OPTIONS_HELP)
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train an mmpretrain, mmdet or mmseg model (the library '
        "is the config's default_scope)")
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint in the work '
        'directory.')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training (on a GPU with '
        "mmengine's AmpOptimWrapper, on the CPU with CPUAmpOptimWrapper)")
    parser.add_argument(
        '--amp-dtype', choices=['float16', 'bfloat16'],
        help='the autocast dtype of --amp (default: float16 with dynamic '
        'loss scaling on a GPU, bfloat16 on the CPU, where float16 is slow)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='enable automatically scaling LR (the config needs '
        'auto_scale_lr.base_batch_size)')
    parser.add_argument(
        '--no-validate', action='store_true',
        help='whether not to evaluate the checkpoint during training')
    parser.add_argument(
        '--no-pin-memory', action='store_true',
        help='whether to disable the pin_memory option in dataloaders.')
    parser.add_argument(
        '--no-persistent-workers', action='store_true',
        help='whether to disable the persistent_workers option in '
        'dataloaders.')
    _add_common_args(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) an mmpretrain, mmdet or mmseg model '
        "(the library is the config's default_scope)")
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out', type=str,
        help='mmdet, mmpretrain: dump predictions to this pickle file for '
        'offline evaluation; mmseg: the directory to save the predicted '
        'segmentation maps to')
    parser.add_argument(
        '--out-item', choices=['metrics', 'pred'],
        help='mmpretrain only: whether --out holds the metrics or the '
        'predictions (default)')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, '
        'it will be automatically saved to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--interval', type=int, default=1,
        help='mmpretrain only: visualize per interval samples.')
    parser.add_argument(
        '--tta', action='store_true',
        help="Test-time augmentation with the config's tta_model and "
        'tta_pipeline; mmdet and mmpretrain configs without them get flip '
        'TTA, as with their own tools.')
    parser.add_argument(
        '--amp', action='store_true',
        help='test with automatic mixed precision (test_cfg.fp16)')
    parser.add_argument(
        '--no-pin-memory', action='store_true',
        help='whether to disable the pin_memory option in dataloaders.')
    _add_common_args(parser)
    return parser


def _parse(parser, argv):
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def parse_train_args(argv: Optional[Sequence[str]] = None):
    return _parse(train_parser(), argv)


def parse_test_args(argv: Optional[Sequence[str]] = None):
    args = _parse(test_parser(), argv)
    if args.out is None and args.out_item is not None:
        raise ValueError('Please use `--out` argument to specify the path of '
                         'the output file before using `--out-item`.')
    return args


# -- configs ----------------------------------------------------------------
def load_config(args) -> Config:
    """``Config.fromfile`` with ``--cfg-options`` merged, work_dir set."""
    return merge_common_args(Config.fromfile(args.config), args)


def merge_common_args(cfg: Config, args) -> Config:
    """``--cfg-options``, ``--launcher`` and ``--work-dir``."""
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    # work_dir: CLI > config > ./work_dirs/<config stem>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def _set_dataloader_defaults(cfg, fields, persistent_workers, no_pin_memory,
                             no_persistent_workers=False):
    """mmpretrain's tools: pin_memory, persistent_workers, default_collate."""
    for field in fields:
        if cfg.get(field, None) is None:
            continue
        loader = ConfigDict(pin_memory=True,
                            collate_fn=dict(type='default_collate'))
        # torch refuses persistent workers without workers.
        if persistent_workers and cfg[field].get('num_workers', 0) > 0:
            loader.persistent_workers = True
        loader.update(cfg[field])
        if no_pin_memory:
            loader.pin_memory = False
        if no_persistent_workers:
            loader.persistent_workers = False
        cfg[field] = loader


def setup_train_cfg(cfg: Config, args, library: str) -> Config:
    """Apply the training flags to ``cfg`` as the library's train.py does."""
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if args.amp_dtype and not args.amp:
        raise ValueError('--amp-dtype needs --amp')
    if args.amp:
        if args.amp_dtype:
            cfg.optim_wrapper.dtype = args.amp_dtype
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
            print_log('AMP training is already enabled in your config.',
                      logger='current', level=logging.WARNING)
        else:
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
            if torch.cuda.is_available():
                cfg.optim_wrapper.type = 'AmpOptimWrapper'
            else:  # mmengine's AmpOptimWrapper asserts a GPU
                cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
                dtype = cfg.optim_wrapper.setdefault('dtype', 'bfloat16')
                print_log(f'No CUDA: --amp trains with {dtype} autocast on '
                          'the CPU (CPUAmpOptimWrapper).', logger='current')

    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr', None)
        if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
            raise RuntimeError(
                '--auto-scale-lr needs auto_scale_lr=dict(enable=False, '
                'base_batch_size=...) in the config; it has none.')
        cfg.auto_scale_lr.enable = True

    # An explicit checkpoint, or 'auto': the latest one in work_dir.
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if library == 'mmpretrain' or args.no_pin_memory or \
            args.no_persistent_workers:
        _set_dataloader_defaults(
            cfg, ['train_dataloader', 'val_dataloader', 'test_dataloader'],
            persistent_workers=library == 'mmpretrain',
            no_pin_memory=args.no_pin_memory,
            no_persistent_workers=args.no_persistent_workers)
    return cfg


def _innermost_dataset(dataset_cfg):
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def _tta_mmdet(cfg: Config) -> None:
    # As mmdet's tools/test.py, plus masks.
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, '
                      'we will set it as default.')
        cfg.tta_model = dict(
            type='DetTTAModel',
            tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                         max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, '
                      'we will set it as default.')
        test_data_cfg = _innermost_dataset(cfg.test_dataloader.dataset)
        cfg.tta_pipeline = copy.deepcopy(test_data_cfg.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[
                [dict(type='RandomFlip', prob=1.),
                 dict(type='RandomFlip', prob=0.)],
                [dict(type='PackDetInputs',
                      meta_keys=('img_id', 'img_path', 'ori_shape',
                                 'img_shape', 'scale_factor', 'flip',
                                 'flip_direction'))],
            ])
    if cfg.tta_model.get('type') in ('DetTTAModel', 'mmdet.DetTTAModel'):
        # mmdet 3.3's DetTTAModel asserts that there are no masks; this one
        # merges them too, and is DetTTAModel for predictions without.
        _register_mask_tta_model()
        print_log(f'--tta: {MASK_TTA} (DetTTAModel, plus instance masks) '
                  'merges the views.', logger='current')
        cfg.tta_model.type = MASK_TTA
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _tta_mmseg(cfg: Config) -> None:
    # As mmseg's tools/test.py, which has no default.
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
        raise ValueError(
            f'--tta: the config has no {"/".join(missing)}; mmseg configs '
            "get them from _base_/default_runtime.py (tta_model = "
            "dict(type='SegTTAModel')) and the dataset base "
            '(tta_pipeline = [...TestTimeAug...]).')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def _tta_mmpretrain(cfg: Config) -> None:
    # As mmpretrain's tools/test.py.
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        test_pipeline = cfg.test_dataloader.dataset.pipeline
        cfg.tta_pipeline = copy.deepcopy(test_pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[
                [dict(type='RandomFlip', prob=1.),
                 dict(type='RandomFlip', prob=0.)],
                [test_pipeline[-1]],
            ])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _show(cfg: Config, args, library: str) -> None:
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise RuntimeError(
            'VisualizationHook must be included in default_hooks. refer to '
            "usage \"visualization=dict(type='VisualizationHook')\"")
    hook = hooks['visualization']
    if library == 'mmpretrain':
        hook.enable = True
        hook.show = args.show
        hook.wait_time = args.wait_time
        hook.out_dir = args.show_dir
        hook.interval = args.interval
        return
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if library == 'mmdet':
            hook['test_out_dir'] = args.show_dir
        else:  # mmseg
            cfg.visualizer['save_dir'] = args.show_dir


def setup_test_cfg(cfg: Config, args, library: str) -> Config:
    """Apply the test flags to ``cfg`` as the library's test.py does.

    ``--out`` for mmdet and mmpretrain is handled by :func:`add_dump_metric`
    once the runner exists.
    """
    cfg.load_from = args.checkpoint
    if args.amp:
        cfg.test_cfg = cfg.get('test_cfg', None) or ConfigDict()
        cfg.test_cfg.fp16 = True
        if cfg.test_cfg.get('type', 'TestLoop') == 'TestLoop':
            # The same loop, with float32 predictions for the metrics.
            cfg.test_cfg.type = 'AmpTestLoop'
        if not torch.cuda.is_available():
            # mmengine's test loop then autocasts to bfloat16 on the CPU,
            # where mmcv's compiled ops take float32 only.
            mmcv_ops_in_float32_under_cpu_autocast()
    if args.show or args.show_dir:
        _show(cfg, args, library)
    if args.tta:
        dict(mmdet=_tta_mmdet, mmseg=_tta_mmseg,
             mmpretrain=_tta_mmpretrain)[library](cfg)
    if args.out is not None:
        if library == 'mmdet':
            assert args.out.endswith(('.pkl', '.pickle')), \
                'The dump file must be a pkl file.'
        elif library == 'mmseg':
            evaluators = cfg.test_evaluator
            if isinstance(evaluators, dict):
                evaluators = [evaluators]
            for evaluator in evaluators:
                evaluator['output_dir'] = args.out
                evaluator['keep_results'] = True
    if library == 'mmpretrain' or args.no_pin_memory:
        _set_dataloader_defaults(cfg, ['test_dataloader'],
                                 persistent_workers=False,
                                 no_pin_memory=args.no_pin_memory)
    return cfg


def add_dump_metric(runner, args, library: str) -> None:
    """``--out`` for mmdet (DumpDetResults) and mmpretrain (DumpResults)."""
    if args.out is None:
        return
    if library == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    elif library == 'mmpretrain' and args.out_item in ('pred', None):
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))


# -- distributed without CUDA -----------------------------------------------
def _register_cpu_ddp():
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    if CPU_DDP in MODEL_WRAPPERS.module_dict:
        return

    @MODEL_WRAPPERS.register_module(name=CPU_DDP)
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """MMDistributedDataParallel for a module on the CPU.

        mmengine's runner passes ``device_ids=[LOCAL_RANK]``, which torch's
        DistributedDataParallel refuses for CPU modules.
        """

        def __init__(self, module, device_ids=None, output_device=None,
                     **kwargs):
            super().__init__(module=module, **kwargs)


def _find_types(obj, name):
    if isinstance(obj, dict):
        return obj.get('type') == name or any(
            _find_types(v, name) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_find_types(v, name) for v in obj)
    return False


@contextlib.contextmanager
def _no_cuda_set_device():
    # mmengine's init_dist calls torch.cuda.set_device(LOCAL_RANK), which a
    # CPU-only torch cannot do.
    set_device = torch.cuda.set_device
    torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        torch.cuda.set_device = set_device


def setup_cpu_distributed(cfg: Config) -> None:
    """Without CUDA, run ``--launcher pytorch|slurm|mpi`` on gloo.

    Sets ``env_cfg.dist_cfg.backend = 'gloo'`` (if it is ``nccl``, the
    libraries' default), initialises the process group the way mmengine's
    runner would, minus ``torch.cuda.set_device``, and wraps the model in a
    DistributedDataParallel that takes no ``device_ids``.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    from mmengine.dist import init_dist, is_distributed

    cfg.env_cfg = cfg.get('env_cfg', None) or ConfigDict()
    cfg.env_cfg.dist_cfg = cfg.env_cfg.get('dist_cfg', None) or ConfigDict()
    backend = cfg.env_cfg.dist_cfg.get('backend', 'nccl')
    if backend in ('nccl', 'hccl', 'cncl', 'mccl'):
        cfg.env_cfg.dist_cfg.backend = 'gloo'
        print_log(f'CUDA is not available: distributed backend {backend} '
                  'replaced by gloo.', logger='current')

    _register_cpu_ddp()
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type=CPU_DDP, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel'):
        wrapper.type = CPU_DDP

    if _find_types(cfg.get('model', {}), 'SyncBN') or cfg.get('sync_bn'):
        print_log('The model uses SyncBN, which torch runs on GPUs only: '
                  'distributed training on the CPU will fail. Use BN in '
                  'the config, or run one process.',
                  logger='current', level=logging.WARNING)

    if not is_distributed():
        with _no_cuda_set_device():
            init_dist(cfg.launcher, **cfg.env_cfg.dist_cfg)


# -- mmdet TTA with masks ---------------------------------------------------
def _register_mask_tta_model():
    from mmvheat.registry import MODELS

    if 'MaskDetTTAModel' in MODELS.module_dict:
        return
    from mmdet.models.test_time_augs import DetTTAModel

    @MODELS.register_module(name='MaskDetTTAModel')
    class MaskDetTTAModel(DetTTAModel):
        """mmdet's DetTTAModel, with instance masks.

        The masks of each view are flipped back like the boxes and follow
        them through the NMS. Predictions without masks are merged by
        DetTTAModel itself.
        """

        def _merge_single_sample(self, data_samples):
            if data_samples[0].pred_instances.get('masks', None) is None:
                return super()._merge_single_sample(data_samples)
            from mmcv.ops import batched_nms
            from mmengine.structures import InstanceData

            aug_masks = []
            for data_sample in data_samples:
                masks = data_sample.pred_instances.masks
                if data_sample.metainfo.get('flip', False):
                    direction = data_sample.metainfo['flip_direction']
                    dims = dict(horizontal=[-1], vertical=[-2],
                                diagonal=[-2, -1])[direction]
                    masks = masks.flip(dims)
                aug_masks.append(masks)
            merged_bboxes, merged_scores = self.merge_aug_bboxes(
                [s.pred_instances.bboxes for s in data_samples],
                [s.pred_instances.scores for s in data_samples],
                [s.metainfo for s in data_samples])
            merged_labels = torch.cat(
                [s.pred_instances.labels for s in data_samples])
            merged_masks = torch.cat(aug_masks)
            if merged_bboxes.numel() == 0:
                return data_samples[0]
            det_bboxes, keep = batched_nms(merged_bboxes, merged_scores,
                                           merged_labels, self.tta_cfg['nms'])
            keep = keep[:self.tta_cfg['max_per_img']]
            det_bboxes = det_bboxes[:self.tta_cfg['max_per_img']]
            results = InstanceData()
            results.bboxes = det_bboxes[:, :-1].clone()
            results.scores = det_bboxes[:, -1].clone()
            results.labels = merged_labels[keep]
            results.masks = merged_masks[keep]
            det_results = data_samples[0]
            det_results.pred_instances = results
            return det_results


# -- runs -------------------------------------------------------------------
def _shutdown_distributed() -> None:
    """Wait for every process, then destroy the process group.

    mmengine leaves the group to the interpreter's exit, where gloo can
    abort a process that finishes first ("terminate called without an
    active exception"); torch asks for ``destroy_process_group`` anyway.
    """
    import torch.distributed as torch_dist
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def build_runner(cfg: Config, library: str):
    """``Runner.from_cfg``; the library's ``RUNNERS`` for ``runner_type``."""
    if 'runner_type' not in cfg:
        from mmengine.runner import Runner
        return Runner.from_cfg(cfg)
    return import_module(f'{library}.registry').RUNNERS.build(cfg)


def train(argv: Optional[List[str]] = None):
    """``tools/train.py``; returns the runner after training."""
    args = parse_train_args(argv)
    cfg = load_config(args)
    library = detect_library(cfg)
    register_library(library)
    cfg = setup_train_cfg(cfg, args, library)
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg, library)
    runner.train()
    _shutdown_distributed()
    return runner


def test(argv: Optional[List[str]] = None):
    """``tools/test.py``; returns the metrics."""
    args = parse_test_args(argv)
    cfg = load_config(args)
    library = detect_library(cfg)
    register_library(library)
    cfg = setup_test_cfg(cfg, args, library)
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg, library)
    add_dump_metric(runner, args, library)
    metrics = runner.test()
    if args.out and library == 'mmpretrain' and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)
    _shutdown_distributed()
    return metrics
