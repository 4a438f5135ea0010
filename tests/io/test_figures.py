import pytest

from codelora.io.figures import pyplot, save_figure


def test_save_figure_writes_a_png_and_closes_it(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    save_figure(fig, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and not plt.fignum_exists(fig.number)
    fig, _ = plt.subplots()
    with pytest.raises(FileNotFoundError):
        save_figure(fig, tmp_path / "missing-dir" / "p.png")
    assert not plt.fignum_exists(fig.number) and sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]
