pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.docker",
    "tests.fixtures.hub",
    "tests.fixtures.sim",
    "tests.fixtures.images",
    "tests.fixtures.gpu",
    "tests.fixtures.s3",
    "tests.fixtures.http",
    "tests.fixtures.worker_process",
    "tests.fixtures.file_server",
    "tests.fixtures.webhooks",
]
