"""OccNet structure against FlashOCC's checkpoint keys, and the FlashOCC checkpoint import."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip('torch')  # absent in the Python 3.10 compatibility run

from occ_perception.cli import main as cli_main
from occ_perception.model.checkpoint import ModelCheckpointError, load_checkpoint
from occ_perception.model.config import CONFIGS, ConfigError, get_config
from occ_perception.model.flashocc import (
    CheckpointError,
    extract_state_dict,
    import_flashocc_state_dict,
    load_flashocc_checkpoint,
)
from occ_perception.model.network import OccNet
from occ_perception.model.norm import NormError, group_count, norm2d

# FlashOCC's state_dict keys and shapes (M0 and M1), kept in the repository so the test runs in any clone
STATE_DICT_JSON = Path(__file__).resolve().parent / 'fixtures' / 'flashocc_state_dict.json'
PUBLISHED_PARAMS_M = {'flashocc-m0': 39.94, 'flashocc-m1': 44.74}


@pytest.fixture(scope='module')
def flashocc_keys() -> dict:
    return json.loads(STATE_DICT_JSON.read_text())


def random_flashocc_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            out[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith('running_var'):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.01
    return out


@pytest.mark.parametrize('name', ['flashocc-m0', 'flashocc-m1'])
def test_names_and_shapes_equal_flashocc(name: str, flashocc_keys: dict) -> None:
    net = OccNet(get_config(name, flow_head=False))
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    theirs = flashocc_keys[name]
    assert len(theirs) == 430
    assert sorted(ours) == sorted(theirs)
    assert {k: ours[k] for k in theirs} == theirs


@pytest.mark.parametrize('name', ['flashocc-m0', 'flashocc-m1'])
def test_trainable_parameter_count(name: str) -> None:
    net = OccNet(get_config(name, flow_head=False))
    count = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert abs(count / 1e6 - PUBLISHED_PARAMS_M[name]) < 0.01, count


def test_additions_are_only_flow_head(flashocc_keys: dict) -> None:
    net = OccNet(get_config('flashocc-m0'))  # with the flow head
    extra = set(net.state_dict()) - set(flashocc_keys['flashocc-m0'])
    assert extra and all(k.startswith('flow_head.') for k in extra)


def test_history_widens_first_bev_convs() -> None:
    cfg = get_config('flashocc-m1', history=2)
    assert cfg.history_offsets == (0.5, 1.0)
    sd = OccNet(cfg).state_dict()
    assert sd['img_bev_encoder_backbone.layers.0.0.conv1.weight'].shape[1] == 64 * 3
    assert sd['img_bev_encoder_backbone.layers.0.0.downsample.weight'].shape[1] == 64 * 3


def test_history_projection_narrows_the_cache_and_the_fusion() -> None:
    """tiny caches an 8-channel 1x1 projection of its 32-channel splatted BEV: the first BEV convs take
    32 + K * 8 channels, the graph's history_bev input and bev_feature output have 8, and the projection
    exists only with history (K = 0 caches nothing and keeps the whole feature)."""
    cfg = get_config('tiny', history=2)
    assert (cfg.context_channels, cfg.cache_channels, cfg.bev_in_channels) == (32, 8, 48)
    net = OccNet(cfg)
    sd = net.state_dict()
    assert sd['history_proj.weight'].shape == (8, 32, 1, 1)
    assert sd['img_bev_encoder_backbone.layers.0.0.conv1.weight'].shape[1] == 48
    specs = {s.name: s.shape for s in (*net.input_specs(), *net.output_specs())}
    assert specs['history_bev'] == (2, 8, 200, 200) and specs['bev_feature'] == (8, 200, 200)
    single = get_config('tiny', history=0)
    assert single.cache_channels == 32 and not single.history_projection
    assert 'history_proj.weight' not in OccNet(single).state_dict()
    assert not get_config('flashocc-m0', history=2).history_projection  # FlashOCC's fusion: the whole feature
    feature = torch.randn(32, 200, 200)
    with torch.no_grad():
        cached = net.cache_feature(feature)
        batch = net.cache_feature(torch.stack([feature, 2 * feature]))
    want = torch.einsum('oc,cyx->oyx', sd['history_proj.weight'][:, :, 0, 0], feature)
    want += sd['history_proj.bias'][:, None, None]
    torch.testing.assert_close(cached, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch[0], cached)
    with pytest.raises(ConfigError, match='history_channels'):
        replace(cfg, history_channels=33)


def test_configs() -> None:
    assert CONFIGS['flashocc-m0'].num_depth_bins == 44
    assert CONFIGS['flashocc-m1'].num_depth_bins == 88
    assert CONFIGS['flashocc-m0'].depth_bins[0] == 1.0 and CONFIGS['flashocc-m1'].depth_bins[-1] == 44.5
    assert CONFIGS['flashocc-m0'].feature_size == (44, 16)
    assert CONFIGS['tiny'].bev_size == (200, 200) and CONFIGS['tiny'].z_size == 16
    with pytest.raises(ConfigError, match='unknown model config'):
        get_config('flashocc-m9')
    with pytest.raises(ConfigError, match='history'):
        get_config('tiny', history=2, history_offsets=(0.5,))


def test_import_random_flashocc_checkpoint(tmp_path: Path, flashocc_keys: dict) -> None:
    state = random_flashocc_state(flashocc_keys['flashocc-m0'])
    path = tmp_path / 'flashocc_m0.pth'
    torch.save({'epoch': 24, 'state_dict': state, 'updates': 1000}, path)  # EMA layout
    net, report = load_flashocc_checkpoint(path, get_config('flashocc-m0'))
    assert report.ok, report.summary()
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == 430
    assert report.additions and all(k.startswith('flow_head.') for k in report.additions)
    sd = net.state_dict()
    for key in (
        'img_backbone.layer3.5.conv2.weight',
        'img_view_transformer.depth_net.bias',
        'img_bev_encoder_neck.up2.2.running_var',
        'occ_head.predicter.2.weight',
    ):
        assert torch.equal(sd[key], state[key])

    # plain {'state_dict'} with a DataParallel prefix, into the exact FlashOCC structure
    plain = tmp_path / 'flashocc_m0_plain.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in state.items()}}, plain)
    net2, report2 = load_flashocc_checkpoint(plain, get_config('flashocc-m0', flow_head=False))
    assert report2.ok and report2.additions == [] and len(report2.loaded) == 430
    assert torch.equal(net2.state_dict()['img_backbone.conv1.weight'], state['img_backbone.conv1.weight'])

    # CLI: import-flashocc writes our checkpoint, which loads back
    out = tmp_path / 'ours.pt'
    assert cli_main(['import-flashocc', str(path), '--config', 'flashocc-m0', '--out', str(out)]) == 0
    loaded = load_checkpoint(out, get_config('flashocc-m0'))
    assert torch.equal(
        loaded.state_dict()['img_neck.fpn_convs.0.conv.weight'], state['img_neck.fpn_convs.0.conv.weight']
    )
    with pytest.raises(ModelCheckpointError, match='requested flashocc-m1'):
        load_checkpoint(out, get_config('flashocc-m1'))


def test_import_into_temporal_network_keeps_flashocc_output(flashocc_keys: dict) -> None:
    state = random_flashocc_state(flashocc_keys['flashocc-m0'], seed=1)
    net = OccNet(get_config('flashocc-m0', history=2))
    report = import_flashocc_state_dict(net, state)
    assert report.ok and len(report.widened) == 2
    w = net.state_dict()['img_bev_encoder_backbone.layers.0.0.conv1.weight']
    assert torch.equal(w[:, :64], state['img_bev_encoder_backbone.layers.0.0.conv1.weight'])
    assert torch.count_nonzero(w[:, 64:]) == 0


def test_import_rejects_wrong_config(flashocc_keys: dict) -> None:
    state = random_flashocc_state(flashocc_keys['flashocc-m1'])
    with pytest.raises(CheckpointError, match='depth_net'):
        import_flashocc_state_dict(OccNet(get_config('flashocc-m0')), state)
    with pytest.raises(CheckpointError, match='expected'):
        extract_state_dict({'state_dict': {'a': 3}})


def test_import_reports_unexpected_and_missing(flashocc_keys: dict) -> None:
    state = random_flashocc_state(flashocc_keys['flashocc-m0'])
    state['img_backbone.fc.weight'] = torch.zeros(1000, 2048)
    del state['occ_head.predicter.2.bias']
    report = import_flashocc_state_dict(OccNet(get_config('flashocc-m0')), state)
    assert not report.ok
    assert report.unexpected == ['img_backbone.fc.weight']
    assert report.missing == ['occ_head.predicter.2.bias']


def test_load_flashocc_checkpoint_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='bad.pth'):
        load_flashocc_checkpoint(bad, get_config('flashocc-m0'))


def test_forward_rejects_missing_or_unexpected_history() -> None:
    import inspect

    from occ_perception.model.network import NetworkInputError
    from occ_perception.model.splat_tables import build_splat_tables
    from occ_perception.rig import Rig

    net = OccNet(get_config('tiny', history=2))
    names = [s.name for s in net.input_specs()]
    assert names[-3:] == ['history_bev', 'history_theta', 'history_valid']
    assert list(inspect.signature(net.forward).parameters) == names  # forward's parameters are the graph inputs
    cfg = net.config
    built = build_splat_tables(cfg, Rig.nuscenes().matrices(*cfg.image_size))
    tables = {k: torch.from_numpy(v) for k, v in built.items()}
    images = torch.zeros(6, 128, 352, 3, dtype=torch.uint8)
    with pytest.raises(NetworkInputError, match='history_bev'):
        net(images, *net.tables_from(tables))
    with pytest.raises(NetworkInputError, match='history_theta'):
        net.predict(images, tables, history_bev=torch.zeros(2, 32, 200, 200))
    single = OccNet(get_config('tiny'))
    with pytest.raises(NetworkInputError, match='no history'):
        single.predict(images, tables, history_bev=torch.zeros(1, 32, 200, 200))
    with pytest.raises(NetworkInputError, match='splat_reduce_2'):
        single.encode_bev(images, {k: v for k, v in tables.items() if k != 'splat_reduce_2'})


def _feeds(net: OccNet, seed: int) -> dict[str, torch.Tensor]:
    from occ_perception.runtime.export import sample_inputs

    return {k: torch.from_numpy(v) for k, v in sample_inputs(net, seed=seed).items()}


@pytest.mark.parametrize('history', [0, 2])
def test_tiny_computes_the_same_in_train_and_eval_mode(history: int) -> None:
    """tiny uses GroupNorm: per-sample statistics in both modes, so the exported (eval-mode) graph computes
    what training computed. The same weights with BatchNorm differ between the modes (the failure it fixes)."""
    torch.set_num_threads(1)
    cfg = get_config('tiny', history=history)
    assert cfg.norm == 'group'
    outputs = {}
    for norm in ('group', 'batch'):
        torch.manual_seed(0)
        net = OccNet(replace(cfg, norm=norm))
        for module in net.modules():  # non-trivial affine parameters, as after training
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
                torch.nn.init.uniform_(module.bias, -0.2, 0.2)
        feeds = _feeds(net, seed=5)
        hist = [feeds.get(n) for n in ('history_bev', 'history_theta', 'history_valid')]
        with torch.no_grad():
            net.train()
            train_out = net.predict(feeds['images'], feeds, *hist)[:3]
            net.eval()
            eval_out = net.predict(feeds['images'], feeds, *hist)[:3]
        outputs[norm] = (train_out, eval_out)
    (logits_t, flow_t, bev_t), (logits_e, flow_e, bev_e) = outputs['group']
    assert flow_t is not None and flow_e is not None
    assert float(bev_t.abs().max()) > 0 and float(logits_t.std()) > 0
    torch.testing.assert_close(bev_e, bev_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits_e, logits_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flow_e, flow_t, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits_t.argmax(-1), logits_e.argmax(-1))
    (logits_bt, _, _), (logits_be, _, _) = outputs['batch']
    assert float((logits_bt - logits_be).abs().max()) > 1e-2


def test_group_norm_keeps_the_batch_norm_parameter_names() -> None:
    group = OccNet(get_config('tiny')).state_dict()
    batch = OccNet(replace(get_config('tiny'), norm='batch')).state_dict()
    stats = ('.running_mean', '.running_var', '.num_batches_tracked')
    assert not any(k.endswith(stats) for k in group)
    assert sorted(group) == sorted(k for k in batch if not k.endswith(stats))
    assert all(group[k].shape == batch[k].shape for k in group)
    norms = [m for m in OccNet(get_config('tiny')).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) > 20 and all(m.num_channels // m.num_groups >= 4 for m in norms)
    for name in ('flashocc-m0', 'flashocc-m1'):
        assert get_config(name).norm == 'batch'  # FlashOCC checkpoints import by key (430 keys, tested above)


def test_group_count_and_norm_errors() -> None:
    assert [group_count(c) for c in (16, 32, 64, 128, 256, 24, 20, 6, 2)] == [4, 8, 16, 32, 32, 6, 5, 1, 1]
    assert isinstance(norm2d('group', 48), torch.nn.GroupNorm) and norm2d('group', 48).num_groups == 12
    with pytest.raises(NormError, match="'layer'"):
        norm2d('layer', 16)
    with pytest.raises(ConfigError, match='norm'):
        replace(get_config('tiny'), norm='instance')


def test_checkpoint_of_another_normalisation_is_rejected(tmp_path: Path) -> None:
    from occ_perception.model.checkpoint import save_checkpoint

    batch_tiny = OccNet(replace(get_config('tiny'), norm='batch'))
    path = tmp_path / 'tiny_bn.pt'
    save_checkpoint(batch_tiny, path)
    with pytest.raises(ModelCheckpointError, match="'batch' normalisation.*'group'"):
        load_checkpoint(path)
    data = torch.load(path, weights_only=True)
    del data['norm']  # written before the field existed: told apart by the running statistics
    torch.save(data, path)
    with pytest.raises(ModelCheckpointError, match="'batch' normalisation"):
        load_checkpoint(path)
    save_checkpoint(OccNet(get_config('tiny')), path)
    assert load_checkpoint(path).config.norm == 'group'
