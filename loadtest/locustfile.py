"""The concrete Locust users: one HTTP and one gRPC, sending this user's payload back to back.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --grpc-host 127.0.0.1:8001

Add --rows-per-request N, --model NAME, --payload-csv FILE or --ab VARIANT=WEIGHT,... to change what is sent; name a user
class after the options (TritonHttpUser or TritonGrpcUser) to load one protocol only.
"""

from locust import constant, task

from rf_triton.loadtest.users import BaseTritonGrpcUser, BaseTritonHttpUser


class TritonHttpUser(BaseTritonHttpUser):
    wait_time = constant(0)  # closed loop: each user keeps one request in flight

    @task
    def predict_payload(self) -> None:
        self.send_inference()


class TritonGrpcUser(BaseTritonGrpcUser):
    wait_time = constant(0)

    @task
    def predict_payload(self) -> None:
        self.send_inference()
