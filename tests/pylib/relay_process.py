"""`sluice serve` for Python tests: started with a configuration's text on ephemeral ports; its
first line (the bound addresses) read."""
import json
import os
import subprocess


def serve(sluice, config_text, directory, name="relay.toml"):
    """The relay process and its "listening" line (a dict: grpc, http, dashboard)."""
    config = os.path.join(directory, name)
    with open(config, "w") as f:
        f.write(config_text)
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0")
    relay = subprocess.Popen([sluice, "serve", "--config", config], stdout=subprocess.PIPE,
                             env=env, text=True)
    line = json.loads(relay.stdout.readline())
    assert line["event"] == "listening", line
    return relay, line


def principals(reader_token, writer_token):
    """[[principal]] entries: "reader" may subscribe to py.>, "writer" publish to py.*."""
    return (f'[[principal]]\nname = "reader"\ntoken = "{reader_token}"\nsubscribe = ["py.>"]\n'
            f'[[principal]]\nname = "writer"\ntoken = "{writer_token}"\npublish = ["py.*"]\n')
