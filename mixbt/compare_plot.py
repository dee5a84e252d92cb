"""compare.py's picture: one panel per logged quantity, one curve per run (or per group of seeds:
the mean with a shaded ± std band), in two rows with one legend below, readable at 100 % zoom."""
import math
import os

from mixbt.errors import MixBTError

PANEL_INCHES = (4.6, 3.3)
DPI = 100


def layout(n):
    """(rows, columns) of n panels: one row for one or two, else two rows."""
    rows = 1 if n <= 2 else 2
    return rows, math.ceil(n / rows)


def figure(panels, series):
    """The matplotlib figure. `panels`: [(key, title, log_allowed)]; `series`: [(legend label,
    {key: [(epoch, mean, std or None)]})]."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    if not panels:
        raise MixBTError('nothing to plot: the runs have no logged loss or kNN values yet')
    rows, cols = layout(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows),
                             squeeze=False, dpi=DPI)
    colors = (plt.get_cmap('tab10').colors if len(series) <= 10
              else [plt.get_cmap('viridis')(i / (len(series) - 1)) for i in range(len(series))])
    for ax, (key, title, log_allowed) in zip(axes.flat, panels):
        values = []
        for (text, curves), color in zip(series, colors):
            pts = curves.get(key, [])
            if not pts:
                continue
            epochs, means = [p[0] for p in pts], [p[1] for p in pts]
            values += means
            ax.plot(epochs, means, color=color, label=text, marker='.' if len(pts) < 40 else None)
            if any(p[2] is not None for p in pts):
                low = [m - (s or 0.0) for _, m, s in pts]
                high = [m + (s or 0.0) for _, m, s in pts]
                ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        if log_allowed and values and min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale('log')  # Barlow Twins losses fall by orders of magnitude in the first epochs
        ax.set_title(title, fontsize=11)
        ax.set_xlabel('epoch', fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, texts = [], []
    for ax in axes.flat:  # every series once, in order, even one missing from the first panel
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in texts:
                handles.append(handle)
                texts.append(text)
    order = [texts.index(text) for text, _ in series if text in texts]
    fig.tight_layout()
    fig.legend([handles[i] for i in order], [texts[i] for i in order], loc='upper center',
               bbox_to_anchor=(0.5, 0.0), ncol=min(len(order), max(1, cols)) if len(order) > 3 else 1,
               fontsize=10, frameon=False)
    return fig


def save(fig, out):
    """Write the figure to `out` (its format from its extension) and close it."""
    import matplotlib.pyplot as plt
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(out)}.{os.getpid()}.tmp')
    try:
        fig.savefig(tmp, dpi=DPI, bbox_inches='tight', format=os.path.splitext(out)[1][1:].lower())
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
