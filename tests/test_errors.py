from itop.errors import ConfigError, DataNotFoundError, ItopError, unknown_name


def test_unknown_name_suggests_nearest_and_lists_known():
    e = unknown_name("method", "rigll", ["rigl", "set", "dense"])
    assert isinstance(e, ConfigError) and isinstance(e, ValueError) and isinstance(e, ItopError)
    assert str(e) == "unknown method 'rigll'; did you mean 'rigl'? Known methods: dense, rigl, set"
    assert "did you mean" not in str(unknown_name("method", "zzzz", ["rigl"]))
    assert "\n" not in str(e)


def test_data_error_is_file_not_found():
    assert issubclass(DataNotFoundError, FileNotFoundError)
