"""bitaxe-analyze: per-config statistics, rankings, comparisons and reports from the stored history."""
