"""The status poll cache answers a request only with what that request's caller may see: it keys on the same
Authorization header authentication reads, and only the job's owner can make it forget an answer."""

from __future__ import annotations


def test_a_second_authorization_header_cannot_reach_an_answer_cached_for_another_caller(api):
    api.app.state.poll_cache.ttl_s = 60
    job = api.submit()
    url = f"/v1/trainings/{job['id']}"
    assert api.client.get(url, headers=api.alice).status_code == 200  # cached for alice
    both = [("Authorization", api.bob["Authorization"]), ("Authorization", api.alice["Authorization"])]
    answer = api.client.get(url, headers=both)
    assert answer.status_code == 404  # authenticated as bob (the first header), as the route itself decides
    assert api.client.get(url, headers=api.alice).status_code == 200


def test_only_the_owner_of_a_job_can_make_the_cache_forget_it(api):
    cache = api.app.state.poll_cache
    cache.ttl_s = 60
    job = api.submit()
    url = f"/v1/trainings/{job['id']}"
    api.client.get(url, headers=api.alice)
    forgotten = []
    real_forget = cache.forget
    cache.forget = lambda job_id: forgotten.append(job_id) or real_forget(job_id)
    assert api.client.post(f"{url}/cancel", headers=api.bob).status_code == 404
    assert api.client.put(f"/fal-ai/ltx2-video-trainer/requests/{job['id']}/cancel",
                          headers=api.bob).status_code == 404
    assert forgotten == [], "a stranger's cancel cleared the owner's cached answers"
    assert api.client.post(f"{url}/cancel", headers=api.alice).status_code == 200
    assert forgotten == [job["id"]]
