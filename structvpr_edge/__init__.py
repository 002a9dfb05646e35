"""structvpr-edge: StructVPR++-style visual place recognition for vehicles and robots."""
__version__ = "0.1.0"
