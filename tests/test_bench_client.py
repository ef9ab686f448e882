"""`grpcstack bench client` runs end to end (tiny counts: this checks the harness, not speed)."""

from __future__ import annotations

from grpcstack.bench import client

ECHO_REQUEST = bytes.fromhex("0a0568656c6c6f")  # EchoRequest(message="hello")


def test_bench_client_compares_three_clients_on_one_server() -> None:
    result = client.run(
        client.Options(
            target="platform_services.echo:EchoServer",
            method="/echo.v1.EchoService/Echo",
            message=ECHO_REQUEST,
            rounds=1,
            sequential=50,
            requests=200,
            server_cpu=None,
            client_cpu=None,
        )
    )
    for name in client.CLIENTS:
        medians = result["medians"][name]
        assert medians["p50_us"] > 0 and medians["cpu_us"] > 0
        assert all(medians[f"rps_{n}"] > 0 for n in client.IN_FLIGHT)
        assert all(medians[f"cpu_us_{n}"] > 0 for n in client.IN_FLIGHT)
        assert medians["server_us_100"] >= 0 and 0 <= medians["server_idle_100"] <= 1
    assert result["ratio_p50_vs_grpcio"] > 0
    text = client.report(result)
    assert "grpcstack/grpcio: sequential p50" in text
    assert "server idle at 100 in flight" in text
