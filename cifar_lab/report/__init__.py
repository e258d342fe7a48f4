"""The comparison report: results table, the seed's numbers beside ours, curves and generated comparisons."""
