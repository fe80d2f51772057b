"""The training runtime both model families share: the sweep folder, precision, seeding,
dataset checks and the built-in digits data."""
