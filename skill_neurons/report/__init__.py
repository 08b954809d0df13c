"""``skill-neurons report``: the paper's tables and figures from run folders, read without Lightning."""
